#!/usr/bin/perl
# A zone keyed on a cookie the application never sets (`$cookie_session_id` where Django sets
# `sessionid`) applies to nobody, silently. After 100 requests that carried a Cookie (or
# Authorization) header and found the key empty, with no non-empty key before, each worker
# says so once, at warn, naming the zone and its key. A zone keyed on the right cookie, and
# one keyed on a map (the anonymous zone of the DRF recipe: empty whenever a session is sent,
# by design), say nothing. Requests without credentials do not count.

use strict;
use warnings;
use Test::More;
use Throttle::Test;

my $t = Throttle::Test->new->write_conf(<<'EOF')->run;
worker_processes 1;
http {
    map $cookie_sessionid $anon_ip { "" $binary_remote_addr; default ""; }

    throttle_zone $cookie_session_id    zone=wrong:1m rate=100000r/h;
    throttle_zone $cookie_sessionid     zone=right:1m rate=100000r/h;
    throttle_zone $anon_ip              zone=anon:1m  rate=100000r/h;
    throttle_zone $http_authorization   zone=token:1m rate=100000r/h;
    throttle_zone $http_x_api_key       zone=apikey:1m rate=100000r/h;

    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            throttle zone=wrong; throttle zone=right; throttle zone=anon; throttle zone=apikey;
            proxy_pass http://127.0.0.1:%%PORT_2%%;
        }
        location /token/ { throttle zone=token; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF

my $warned = qr/\[warn\].*throttle_zone "(\w+)": key "([^"]*)" was empty for 100 requests that carried (a Cookie header|an Authorization header|a Cookie or Authorization header)/;
sub warnings_since {
    my ($mark) = @_;
    return map { [/$warned/] } grep { /$warned/ } split /\n/, $t->log_since($mark);
}

my $mark = $t->log_mark;
# Anonymous requests: no credentials, nothing counts.
for (1 .. 150) { $t->get('/') }
is(scalar(warnings_since($mark)), 0, '150 requests without credentials: no warning');

# 99 signed-in requests: the wrong zone's key was empty 99 times; not yet.
for (1 .. 99) { $t->get('/', Cookie => "sessionid=s$_") }
is(scalar(warnings_since($mark)), 0, '99 requests with a session cookie: not yet');
my $r = $t->get('/', Cookie => 'sessionid=s100');
is($r->{status}, 200, 'requests pass');
my @w = warnings_since($mark);
is(scalar(@w), 1, 'the 100th: one warning') or diag $t->log_since($mark);
is_deeply($w[0], ['wrong', '$cookie_session_id', 'a Cookie header'],
    'it names the zone, its key as written, and the header');
like($t->log_since($mark), qr/is the cookie or header name right\?/, 'and asks the question');

# Once per worker and zone.
for (1 .. 200) { $t->get('/', Cookie => "sessionid=x$_") }
is(scalar(warnings_since($mark)), 1, '200 more: still one warning');

# A zone on the Authorization header that always has it: no warning; one on a header nobody
# sends, or whose key reads no credential, is not watched.
for (1 .. 150) { $t->get('/token/', Authorization => "Bearer t$_") }
is(scalar(warnings_since($mark)), 1, 'a right Authorization key: no warning');
$t->finish;

# The same with the right cookie name only: nothing, ever.
my $t2 = Throttle::Test->new->write_conf(<<'EOF')->run;
worker_processes 1;
http {
    throttle_zone $cookie_sessionid zone=right:1m rate=100000r/h;
    throttle_zone $http_authorization zone=token:1m rate=100000r/h;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { throttle zone=right; throttle zone=token; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF
# The first request is signed in (the name is proven right); then 150 that carry only a
# Cookie the zone does not read (csrftoken) and 150 with a token only.
$t2->get('/', Cookie => 'sessionid=first');
for (1 .. 150) { $t2->get('/', Cookie => 'csrftoken=c') }
for (1 .. 150) { $t2->get('/', Authorization => 'Bearer b') }
unlike($t2->error_log, qr/was empty for/, 'right cookie name: no warning');

# The token zone of this config never saw a non-empty key before 100 Cookie-only requests:
# they do not count for it (it reads Authorization), so it says nothing either.
$t2->done;
