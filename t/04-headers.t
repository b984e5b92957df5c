#!/usr/bin/perl
# The response fields: RateLimit-Policy and RateLimit for every unit of time, on every
# response of a limited location (errors too), and throttle_headers off.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use Throttle::Test;

my $t = Throttle::Test->new->write_conf(<<'EOF')->run;
http {
    throttle_zone $binary_remote_addr zone=per_s:1m rate=10r/s;
    throttle_zone $binary_remote_addr zone=per_m:1m rate=10r/m;
    throttle_zone $binary_remote_addr zone=per_h:1m rate=10r/h;
    throttle_zone $binary_remote_addr zone=per_d:1m rate=10r/d;
    throttle_zone $binary_remote_addr zone=off:1m   rate=1r/h;
    throttle_zone $binary_remote_addr zone=off2:1m  rate=1r/h;
    throttle_zone $binary_remote_addr zone=err:1m   rate=50r/h;

    server {
        listen 127.0.0.1:%%PORT%%;
        root %%TESTDIR%%;

        location /s/ { throttle zone=per_s; }
        location /m/ { throttle zone=per_m; }
        location /h/ { throttle zone=per_h; }
        location /d/ { throttle zone=per_d; }
        location /off/ { throttle zone=off; throttle_headers off; }
        location /err/ { throttle zone=err; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /missing/ { throttle zone=err; }
    }
    server {
        listen 127.0.0.1:%%PORT_3%%;
        throttle_headers off;
        location /inherit-off/ { throttle zone=off2; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /on/ { throttle zone=off2; throttle_headers on; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location /err/500 { return 500; }
        location /err/503 { add_header Retry-After 7 always; return 503 "busy\n"; }
        location / { return 200 "ok\n"; }
    }
}
EOF
$t->write_file("$_/f", "ok\n") for qw(s m h d off);

for (['s', 'per_s', 1], ['m', 'per_m', 60], ['h', 'per_h', 3600], ['d', 'per_d', 86400]) {
    my ($dir, $zone, $w) = @$_;
    my $r = $t->get("/$dir/f");
    is($r->{status}, 200, "$zone: passes");
    is($r->{headers}{'ratelimit-policy'}, qq{"$zone";q=10;w=$w}, "$zone: RateLimit-Policy w=$w");
    my ($rem, $reset) = ($r->{headers}{ratelimit} // '') =~ /^"\Q$zone\E";r=(\d+);t=(\d+)$/;
    is($rem, 9, "$zone: RateLimit r=9");
    ok(defined $reset && $reset >= 1 && $reset <= 2 * $w, "$zone: RateLimit t in 1..2w")
        or diag $r->{headers}{ratelimit};
    is(scalar(grep { lc $_->[0] eq 'ratelimit' } @{ $r->{header_list} }), 1,
        "$zone: one RateLimit field");
}

# per_d: use up the day, then Retry-After is within the window
$t->get('/d/f') for 1 .. 9;
my $r = $t->get('/d/f');
is($r->{status}, 429, 'per_d: 11th rejected');
ok($r->{headers}{'retry-after'} >= 1 && $r->{headers}{'retry-after'} <= 2 * 86400,
    "per_d: Retry-After $r->{headers}{'retry-after'} within two days");

# --- throttle_headers off
$r = $t->get('/off/f');
is($r->{status}, 200, 'headers off: passes');
ok(!exists $r->{headers}{ratelimit}, 'headers off: no RateLimit');
ok(!exists $r->{headers}{'ratelimit-policy'}, 'headers off: no RateLimit-Policy');
$r = $t->get('/off/f');
is($r->{status}, 429, 'headers off: rejected');
like($r->{headers}{'retry-after'} // '', qr/^[1-9]\d*$/, 'headers off: Retry-After still sent');
like($r->{headers}{'content-type'}, qr{^application/problem\+json}, 'headers off: problem+json');
is(eval { decode_json($r->{body})->{zone} }, 'off', 'headers off: body');
ok(!exists $r->{headers}{ratelimit} && !exists $r->{headers}{'ratelimit-policy'},
    'headers off: no RateLimit fields on reject');

# inherited from the server, and switched on again in a location
my $p3 = sub { $t->request('GET', $_[0], {}, undef, port => $t->port(3)) };
$r = $p3->('/inherit-off/');
is($r->{status}, 200, 'inherited off: passes');
ok(!exists $r->{headers}{ratelimit}, 'inherited off: no RateLimit');
$r = $p3->('/on/');
is($r->{status}, 429, 'location on: rejected (same zone)');
is($r->{headers}{'ratelimit-policy'}, '"off2";q=1;w=3600', 'location on: RateLimit-Policy');

# --- every response of a limited location carries the fields, errors included
$r = $t->get('/missing/nothing');
is($r->{status}, 404, '404 from a limited location');
like($r->{headers}{ratelimit} // '', qr/^"err";r=49;t=\d+$/, '404 carries RateLimit');
$r = $t->get('/err/500');
is($r->{status}, 500, 'upstream 500');
like($r->{headers}{ratelimit} // '', qr/^"err";r=48;t=\d+$/, 'upstream 500 carries RateLimit');
$r = $t->get('/err/503');
is($r->{status}, 503, 'upstream 503 with its own Retry-After');
is($r->{headers}{'retry-after'}, 7, "the upstream's Retry-After is passed through untouched");
like($r->{headers}{ratelimit} // '', qr/^"err";r=47;t=\d+$/, 'upstream 503 carries RateLimit');

$t->done;
