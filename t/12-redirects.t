# Internal redirects (try_files, error_page) are counted once, error_page can answer a
# rejection, and `satisfy any` cannot lift a limit (the check runs before access).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Throttle::Test;

my $t = Throttle::Test->new(workers => 2);
$t->write_file('limited.json', qq({"error":"slow down"}\n));
$t->write_file('page.txt', "page\n");
$t->write_conf(<<'EOF')->run;
http {
    throttle_zone $http_x_key zone=a:1m rate=3r/h;
    server {
        listen 127.0.0.1:%%PORT%%;
        root %%TESTDIR%%;
        add_header X-Status $throttle_status always;

        # try_files redirects to a named location that applies the same zone
        location /tf/ {
            throttle zone=a;
            try_files /nonexistent @app;
        }
        location @app {
            throttle zone=a;
            proxy_pass http://127.0.0.1:%%PORT_2%%;
        }

        # the operator's own page for rejections
        location /ep/ {
            throttle zone=a;
            error_page 429 /limited.json;
            proxy_pass http://127.0.0.1:%%PORT_2%%;
        }
        location = /limited.json {
            internal;
        }

        # satisfy any with an allow-all rule does not lift the limit
        location /sa/ {
            satisfy any;
            allow all;
            auth_basic "x";
            auth_basic_user_file %%TESTDIR%%/nope.htpasswd;
            throttle zone=a;
            proxy_pass http://127.0.0.1:%%PORT_2%%;
        }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "app\n"; }
    }
}
EOF

my @s = map { $t->get('/tf/x', 'X-Key' => 'tf')->{status} } 1 .. 5;
is("@s", '200 200 200 429 429', 'try_files: the redirected request is counted once (3r/h: 3 pass)');

@s = map { $t->get('/ep/x', 'X-Key' => 'ep')->{status} } 1 .. 3;
is("@s", '200 200 200', 'error_page location: 3 pass');
my $r = $t->get('/ep/x', 'X-Key' => 'ep');
is($r->{status}, 429, 'error_page: the rejection keeps its status');
is($r->{body}, qq({"error":"slow down"}\n), "error_page: the operator's page is the body");
like($r->{headers}{'retry-after'} // '', qr/^\d+$/, 'error_page: Retry-After survives the redirect');
like($r->{headers}{ratelimit} // '', qr/^"a";r=0;t=\d+$/, 'error_page: RateLimit survives it');
is($r->{headers}{'x-status'}, 'REJECTED', 'error_page: $throttle_status survives it');

@s = map { $t->get('/sa/x', 'X-Key' => 'sa')->{status} } 1 .. 4;
is("@s", '200 200 200 429', 'satisfy any + allow all: still limited');

$t->done;
