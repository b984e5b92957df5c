#!/usr/bin/perl
# The response cache's directives: a bad configuration fails `nginx -t` with an nginx-style
# message (lowercase, the value quoted, no final period; pointing at the offending line when
# the check is made as the directive is read). Limits are checked at their boundaries, and a
# good configuration using every cache directive in every context it is allowed in passes.

use strict;
use warnings;
use Test::More;
use Throttle::Test;

my $t = Throttle::Test->new;

my $R = 'throttle_redis 127.0.0.1:1;';                 # nothing connects at nginx -t
my $S = 'throttle_cache_secret 0123456789abcdef;';      # 16 bytes
my $ns64 = 'n' x 64;
my $ns65 = 'n' x 65;

# [name, http-level lines, location lines, expected message, where]
# where: 'line' (the message names the offending line), 'end' (checked when the
# configuration is merged: nginx names the end of the block), 'none' (checked after the
# whole configuration was read: no file and line).
my @cases = (
    ['throttle_cache without throttle_redis', $S, 'throttle_cache a; throttle_cache_valid 1m;',
        qr/the response cache \("throttle_cache"\) needs "throttle_redis"/, 'none'],
    ['throttle_cache_purge without throttle_redis', '', 'throttle_cache_purge $arg_ns;',
        qr/the response cache \("throttle_cache"\) needs "throttle_redis"/, 'none'],
    ['throttle_cache_invalidate without throttle_redis', '', 'throttle_cache_invalidate a;',
        qr/the response cache \("throttle_cache"\) needs "throttle_redis"/, 'none'],
    ['throttle_cache_user without throttle_cache_secret', $R,
        'throttle_cache a;' . "\n            " . 'throttle_cache_user $cookie_sessionid;',
        qr/"throttle_cache_user" in \S+:\d+ needs "throttle_secret"/, 'none'],
    ['secret of 15 bytes', "$R\n    throttle_cache_secret 0123456789abcde;", 'throttle_cache a;',
        qr/"throttle_cache_secret" must be at least 16 bytes long/, 'line'],
    ['empty secret', "$R\n    throttle_cache_secret \"\";", 'throttle_cache a;',
        qr/"throttle_cache_secret" must be at least 16 bytes long/, 'line'],
    ['secret in a location', "$R $S", 'throttle_cache_secret 0123456789abcdefXYZ;',
        qr/"throttle_cache_secret" directive is not allowed here/, 'line'],
    ['inflate memo of a bad size', "$R $S\n    throttle_cache_inflate_memo 12x;", 'throttle_cache a;',
        qr/"throttle_cache_inflate_memo" directive invalid value/, 'line'],
    ['inflate memo twice', "$R $S\n    throttle_cache_inflate_memo 1m;\n    throttle_cache_inflate_memo 2m;",
        'throttle_cache a;', qr/"throttle_cache_inflate_memo" directive is duplicate/, 'line'],
    ['inflate memo in a location', "$R $S", 'throttle_cache_inflate_memo 1m;',
        qr/"throttle_cache_inflate_memo" directive is not allowed here/, 'line'],
    ['namespace with a slash', "$R $S", 'throttle_cache a/b;',
        qr/invalid namespace "a\/b"/, 'line'],
    ['namespace with a colon', "$R $S", 'throttle_cache a:b;',
        qr/invalid namespace "a:b"/, 'line'],
    ['namespace with braces', "$R $S", 'throttle_cache "a{b}";',
        qr/invalid namespace "a\{b\}"/, 'line'],
    ['namespace with a space', "$R $S", 'throttle_cache "a b";',
        qr/invalid namespace "a b"/, 'line'],
    ['empty namespace', "$R $S", 'throttle_cache "";',
        qr/invalid namespace ""/, 'line'],
    ['namespace of 65 bytes', "$R $S", "throttle_cache $ns65;",
        qr/invalid namespace "$ns65"/, 'line'],
    ['throttle_cache without argument', "$R $S", 'throttle_cache;',
        qr/invalid number of arguments in "throttle_cache" directive/, 'line'],
    ['valid 500', "$R $S", 'throttle_cache a; throttle_cache_valid 500 10s;',
        qr/status "500" is never stored/, 'line'],
    ['valid 503 among others', "$R $S", 'throttle_cache a; throttle_cache_valid 200 404 503 10s;',
        qr/status "503" is never stored/, 'line'],
    ['valid 206', "$R $S", 'throttle_cache a; throttle_cache_valid 206 10s;',
        qr/status "206" is never stored/, 'line'],
    ['valid 304', "$R $S", 'throttle_cache a; throttle_cache_valid 304 10s;',
        qr/status "304" is never stored/, 'line'],
    ['valid abc', "$R $S", 'throttle_cache a; throttle_cache_valid abc 10s;',
        qr/invalid status "abc"/, 'line'],
    ['valid 199', "$R $S", 'throttle_cache a; throttle_cache_valid 199 10s;',
        qr/invalid status "199"/, 'line'],
    ['valid 600', "$R $S", 'throttle_cache a; throttle_cache_valid 600 10s;',
        qr/invalid status "600"/, 'line'],
    ['valid bad time', "$R $S", 'throttle_cache a; throttle_cache_valid 200 abc;',
        qr/invalid time value "abc"/, 'line'],
    ['valid bad time alone', "$R $S", 'throttle_cache a; throttle_cache_valid 10x;',
        qr/invalid time value "10x"/, 'line'],
    ['valid 0s', "$R $S", 'throttle_cache a; throttle_cache_valid 200 0s;',
        qr/invalid time value "0s"/, 'line'],
    ['valid 31d', "$R $S", 'throttle_cache a; throttle_cache_valid 200 31d;',
        qr/time "31d" is longer than 30 days/, 'line'],
    ['valid 30d 1s', "$R $S", 'throttle_cache a; throttle_cache_valid 200 "30d 1s";',
        qr/time "30d 1s" is longer than 30 days/, 'line'],
    ['valid without argument', "$R $S", 'throttle_cache a; throttle_cache_valid;',
        qr/invalid number of arguments in "throttle_cache_valid" directive/, 'line'],
    ['max_size 0', "$R $S", 'throttle_cache a; throttle_cache_max_size 0;',
        qr/"throttle_cache_max_size" directive must be between 1 and 64m/, 'line'],
    ['max_size 100m', "$R $S", 'throttle_cache a; throttle_cache_max_size 100m;',
        qr/"throttle_cache_max_size" directive must be between 1 and 64m/, 'line'],
    ['max_size 65m', "$R $S", 'throttle_cache a; throttle_cache_max_size 65m;',
        qr/"throttle_cache_max_size" directive must be between 1 and 64m/, 'line'],
    ['max_size abc', "$R $S", 'throttle_cache a; throttle_cache_max_size abc;',
        qr/"throttle_cache_max_size" directive invalid value/, 'line'],
    ['lock_timeout 0', "$R $S", 'throttle_cache a; throttle_cache_lock_timeout 0;',
        qr/"throttle_cache_lock_timeout" directive must not be 0/, 'line'],
    ['lock_timeout 999d', "$R $S", 'throttle_cache a; throttle_cache_lock_timeout 999d;',
        qr/"throttle_cache_lock_timeout" directive must not be longer than 60s/, 'line'],
    ['lock_timeout 61s', "$R $S", 'throttle_cache a; throttle_cache_lock_timeout 61s;',
        qr/"throttle_cache_lock_timeout" directive must not be longer than 60s/, 'line'],
    ['lock_timeout abc', "$R $S", 'throttle_cache a; throttle_cache_lock_timeout abc;',
        qr/"throttle_cache_lock_timeout" directive invalid value/, 'line'],
    ['stale 31d', "$R $S", 'throttle_cache a; throttle_cache_stale 31d;',
        qr/"throttle_cache_stale" directive must not be longer than 30 days/, 'line'],
    ['throttle_cache twice', "$R $S", 'throttle_cache a;' . "\n            " . 'throttle_cache b;',
        qr/"throttle_cache" directive is duplicate/, 'line'],
    ['throttle_cache_secret twice', "$R $S\n    throttle_cache_secret 0123456789abcdefXYZ;",
        'throttle_cache a;',
        qr/"throttle_cache_secret" directive is duplicate/, 'line'],
    ['throttle_cache_purge twice', "$R $S",
        'throttle_cache_purge $arg_ns;' . "\n            " . 'throttle_cache_purge $arg_x;',
        qr/"throttle_cache_purge" directive is duplicate/, 'line'],
    ['throttle_cache_user twice', "$R $S",
        'throttle_cache_user $cookie_a;' . "\n            " . 'throttle_cache_user $cookie_b;',
        qr/"throttle_cache_user" directive is duplicate/, 'line'],
    ['invalidate bad namespace', "$R $S", 'throttle_cache_invalidate good bad/ns;',
        qr/invalid namespace "bad\/ns"/, 'line'],
    ['invalidate namespace of 65 bytes', "$R $S", "throttle_cache_invalidate $ns65;",
        qr/invalid namespace "$ns65"/, 'line'],
    ['invalidate twice', "$R $S",
        'throttle_cache_invalidate a;' . "\n            " . 'throttle_cache_invalidate b;',
        qr/"throttle_cache_invalidate" directive is duplicate/, 'line'],
    ['invalidate_header with a colon', "$R $S", 'throttle_cache_invalidate_header X:Bad;',
        qr/invalid header name "X:Bad"/, 'line'],
    ['invalidate_header with a space', "$R $S", 'throttle_cache_invalidate_header "X Bad";',
        qr/invalid header name "X Bad"/, 'line'],
    ['invalidate_header twice', "$R $S",
        'throttle_cache_invalidate_header X-A;' . "\n            " . 'throttle_cache_invalidate_header X-B;',
        qr/"throttle_cache_invalidate_header" directive is duplicate/, 'line'],
    ['credentials empty name', "$R $S", 'throttle_cache a; throttle_cache_credentials Cookie "";',
        qr/invalid header name ""/, 'line'],
    # Header names are checked alike in every directive that takes one.
    ['credentials with a space', "$R $S", 'throttle_cache a; throttle_cache_credentials "X Y";',
        qr/invalid header name "X Y"/, 'line'],
    ['credentials with a colon', "$R $S", 'throttle_cache a; throttle_cache_credentials Cookie X:Y;',
        qr/invalid header name "X:Y"/, 'line'],
    ['purge at http level', "$R $S\n    throttle_cache_purge \$arg_ns;", '',
        qr/"throttle_cache_purge" directive is not allowed here/, 'line'],
);

sub conf {
    my ($http, $loc, $server) = @_;
    $server //= '';
    return <<"EOF";
http {
    $http
    server {
        listen 127.0.0.1:%%PORT%%;
        $server
        location / {
            $loc
        }
    }
}
EOF
}

for my $c (@cases) {
    my ($name, $http, $loc, $want, $where) = @$c;
    my ($ok, $out) = $t->nginx_t(conf($http, $loc));
    ok(!$ok, "$name: nginx -t fails");
    my ($line) = grep { /\[emerg\]/ } split /\n/, $out;
    like($line // $out, $want, "$name: message");
    my ($msg) = ($line // '') =~ /\[emerg\] (.*)$/;
    $msg //= '';
    my ($file, $no) = $msg =~ / in (\S+):(\d+)$/;
    $msg =~ s/ in \S+:\d+$// if defined $file;
    ok($msg =~ /^["a-z]/ && $msg !~ /\.$/, "$name: lowercase, no final period") or diag $out;
    if ($where eq 'line') {
        my $at = $file ? (split /\n/, $t->read_file($file))[$no - 1] // '' : '';
        like($at, qr/^\s*throttle_cache/, "$name: points at the offending line")
            or diag "line $no: $at";
    } elsif ($where eq 'end') {
        ok(defined $file, "$name: names the configuration file");
    }
}

# The throttle_cache_user message names the throttle_cache_user line.
{
    my ($ok, $out) = $t->nginx_t(conf($R, 'throttle_cache a;' . "\n            "
        . 'throttle_cache_user $cookie_sessionid;'));
    my ($file, $no) = $out =~ /"throttle_cache_user" in (\S+):(\d+) needs/;
    my $at = $file ? (split /\n/, $t->read_file($file))[$no - 1] // '' : '';
    like($at, qr/^\s*throttle_cache_user \$cookie_sessionid;/,
        'throttle_cache_user without secret: names the throttle_cache_user line');
}

# Boundaries that pass.
for my $c (
    ['secret of exactly 16 bytes', "$R $S", 'throttle_cache a;'],
    ['namespace of 64 bytes', "$R $S", "throttle_cache $ns64;"],
    ['namespace with every allowed kind of byte', "$R $S", 'throttle_cache Az09_.-x;'],
    ['valid 30d', "$R $S", 'throttle_cache a; throttle_cache_valid 200 30d;'],
    ['valid 499', "$R $S", 'throttle_cache a; throttle_cache_valid 499 1s;'],
    ['max_size 64m', "$R $S", 'throttle_cache a; throttle_cache_max_size 64m;'],
    ['max_size 1', "$R $S", 'throttle_cache a; throttle_cache_max_size 1;'],
    ['stale 30d', "$R $S", 'throttle_cache a; throttle_cache_stale 30d;'],
    ['throttle_cache off without redis', '', 'throttle_cache off;'],
    ['throttle_cache_user (with the secret) where no throttle_cache is',
        "$R $S", 'throttle_cache_user $cookie_sessionid;'],
) {
    my ($name, $http, $loc) = @$c;
    my ($ok, $out) = $t->nginx_t(conf($http, $loc));
    ok($ok, "$name: nginx -t passes") or diag $out;
}

# Every cache directive, in every context it is allowed in.
my ($ok, $out) = $t->nginx_t(<<'EOF');
http {
    throttle_redis 127.0.0.1:1 timeout=50ms;
    throttle_cache_secret "a secret of more than sixteen bytes";
    throttle_cache http_ns;
    throttle_cache_user $cookie_sessionid;
    throttle_cache_valid 200 301 302 10m;
    throttle_cache_valid 404 1m;
    throttle_cache_stale 1m;
    throttle_cache_max_size 2m;
    throttle_cache_gzip_min_length 512;
    throttle_cache_lock_timeout 3s;
    throttle_cache_credentials Cookie Authorization X-Api-Key;
    throttle_cache_invalidate other;
    throttle_cache_invalidate_header X-My-Invalidate;
    add_header X-Cache $throttle_cache_status always;

    server {
        listen 127.0.0.1:%%PORT%%;
        throttle_cache srv.ns-1;
        throttle_cache_user $http_x_user;
        throttle_cache_valid any 5m;
        throttle_cache_stale 0;
        throttle_cache_max_size 64m;
        throttle_cache_gzip_min_length 4k;
        throttle_cache_lock_timeout 100ms;
        throttle_cache_credentials off;
        throttle_cache_invalidate a b c;
        throttle_cache_invalidate_header off;

        location / {
            throttle_cache loc_ns;
            throttle_cache_user "$cookie_sessionid:$http_x_tenant";
            throttle_cache_valid 200 1s;
            throttle_cache_valid 201 203 404 410 30d;
            throttle_cache_stale 30d;
            throttle_cache_max_size 1;
            throttle_cache_gzip_min_length 0;
            throttle_cache_lock_timeout 5s;
            throttle_cache_credentials Cookie;
            throttle_cache_invalidate loc_ns other;
            throttle_cache_invalidate_header X-Throttle-Invalidate;
            proxy_pass http://127.0.0.1:1;
        }
        location /off/ {
            throttle_cache off;
            proxy_pass http://127.0.0.1:1;
        }
        location = /purge {
            throttle_cache_purge $arg_ns;
        }
    }
}
EOF
ok($ok, 'a good full config passes nginx -t') or diag $out;
like($out, qr/syntax is ok/, 'syntax is ok');

$t->done;
