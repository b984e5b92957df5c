#!/usr/bin/perl
# One zone per location: requests pass up to the rate, then get 429 with Retry-After, the
# problem+json body and the RateLimit fields; one log line per rejection. The check runs
# before content handlers of every kind: a static file, proxy_pass and empty_gif.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use Time::HiRes qw(time);
use Throttle::Test;

my $t = Throttle::Test->new->write_conf(<<'EOF')->run;
http {
    throttle_zone $binary_remote_addr zone=one:1m rate=5r/m;
    throttle_zone $http_x_key         zone=k:1m   rate=2r/h;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /static/ { throttle zone=one; root %%TESTDIR%%; }
        location /proxy/  { throttle zone=k; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location = /gif   { throttle zone=k; empty_gif; }
        location /s503/   { throttle zone=k; throttle_status 503; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /free/   { root %%TESTDIR%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF
$t->write_file('static/f', "file\n");
$t->write_file('free/f', "free\n");

# --- a static file, 5r/m per client address

my $first = time;
for my $i (1 .. 5) {
    my $r = $t->get('/static/f');
    is($r->{status}, 200, "static request $i passes");
    is($r->{body}, "file\n", "static request $i body") if $i == 1;
    is($r->{headers}{'ratelimit-policy'}, '"one";q=5;w=60', "static request $i RateLimit-Policy");
    my ($rem, $reset) = ($r->{headers}{ratelimit} // '') =~ /^"one";r=(\d+);t=(\d+)$/;
    is($rem, 5 - $i, "static request $i RateLimit r= counts down");
    ok(defined $reset && $reset >= 1 && $reset <= 120, "static request $i RateLimit t= in 1..120")
        or diag explain $r->{headers};
    ok(!exists $r->{headers}{'retry-after'}, "static request $i has no Retry-After");
}

my $mark = $t->log_mark;
my $before = time;
my $r = $t->get('/static/f');
my $now = time;    # the request was decided between $before and $now
is($r->{status}, 429, 'sixth request rejected with 429');
my $ra = $r->{headers}{'retry-after'};
like($ra, qr/^\d+$/, 'Retry-After is an integer');
ok($ra >= 1 && $ra <= 120, "Retry-After $ra in 1..2w");
SKIP: {
    # Sliding window (epoch-aligned minutes): 5 counted in this minute, so one more is
    # admitted once the next minute's previous-window weight drops to 4/5, 12s into it.
    # Whatever the load, that is between $want->($now) and $want->($before) (+-1: whole seconds).
    skip 'the requests straddled a minute boundary', 1 if int($first / 60) != int($now / 60);
    my $want = sub { 60 - ($_[0] - int($_[0] / 60) * 60) + 12 };
    ok($ra >= $want->($now) - 1 && $ra <= $want->($before) + 1,
        sprintf('Retry-After %d is the time to the next admission (%.1f .. %.1f)',
            $ra, $want->($now), $want->($before)));
}
like($r->{headers}{'content-type'}, qr{^application/problem\+json\b}, 'problem+json');
is($r->{headers}{'ratelimit-policy'}, '"one";q=5;w=60', 'RateLimit-Policy on reject');
like($r->{headers}{ratelimit}, qr/^"one";r=0;t=\d+$/, 'RateLimit r=0 on reject');
my $body = eval { decode_json($r->{body}) };
ok($body, 'body is JSON') or diag $r->{body};
is_deeply($body, {
    type => 'about:blank',
    title => 'Too Many Requests',
    status => 429,
    detail => 'rate limit exceeded in zone "one"',
    zone => 'one',
    retry_after => 0 + $ra,
}, 'problem body');
is($r->{headers}{'content-length'}, length $r->{body}, 'Content-Length matches the body');

my @lines = $t->log_lines(qr/limiting request/, $mark);
is(scalar @lines, 1, 'one log line for one rejection');
like($lines[0] // '', qr/\[error\].*limiting request.*zone "one"/, 'logged at error with the zone');

is($t->get('/static/f')->{status}, 429, 'still rejected');
is(scalar $t->log_lines(qr/limiting request/, $mark), 2, 'one more log line');

# --- no throttle in this location
for (1 .. 8) {
    $r = $t->get('/free/f');
    last if $r->{status} != 200;
}
is($r->{status}, 200, 'a location without throttle is not limited');
ok(!exists $r->{headers}{ratelimit} && !exists $r->{headers}{'ratelimit-policy'},
    'no RateLimit fields without throttle');

# --- proxy_pass, keyed on a header; empty key = zone not applied
is($t->get('/proxy/', 'X-Key' => 'a')->{status}, 200, 'proxy: key a 1');
$r = $t->get('/proxy/', 'X-Key' => 'a');
is($r->{status}, 200, 'proxy: key a 2');
is($r->{body}, "ok\n", 'proxy: backend body');
is($r->{headers}{ratelimit} =~ s/;t=\d+$//r, '"k";r=0', 'proxy: r=0 after the last allowed');
$r = $t->get('/proxy/', 'X-Key' => 'a');
is($r->{status}, 429, 'proxy: key a 3 rejected');
like($r->{headers}{'retry-after'}, qr/^[1-9]\d*$/, 'proxy: Retry-After');
ok($r->{headers}{'retry-after'} <= 7200, 'proxy: Retry-After within 2w');
is(eval { decode_json($r->{body})->{zone} }, 'k', 'proxy: body names the zone');
is($t->get('/proxy/', 'X-Key' => 'b')->{status}, 200, 'proxy: key b has its own bucket');

for (1 .. 5) {
    $r = $t->get('/proxy/');
    last if $r->{status} != 200;
}
is($r->{status}, 200, 'proxy: no X-Key (empty key) is never limited');
ok(!exists $r->{headers}{ratelimit} && !exists $r->{headers}{'ratelimit-policy'},
    'proxy: no RateLimit fields when no zone applied');

# --- empty_gif shares zone k: key b has one left
is($t->get('/gif', 'X-Key' => 'b')->{status}, 200, 'empty_gif: key b second request');
$r = $t->get('/gif', 'X-Key' => 'b');
is($r->{status}, 429, 'empty_gif: key b third request rejected (zone shared across locations)');

# --- throttle_status
$t->get('/s503/', 'X-Key' => 'c') for 1 .. 2;
$r = $t->get('/s503/', 'X-Key' => 'c');
is($r->{status}, 503, 'throttle_status 503');
like($r->{headers}{'retry-after'}, qr/^[1-9]\d*$/, '503: Retry-After');
is(eval { decode_json($r->{body})->{status} }, 503, '503: body status');

# --- HEAD: rejected without a body
$r = $t->request('HEAD', '/proxy/', { 'X-Key' => 'a' });
is($r->{status}, 429, 'HEAD rejected');
is($r->{body}, '', 'HEAD: no body');

$t->done;
