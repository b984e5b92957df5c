#!/usr/bin/perl
# What RateLimit r= and t= mean (draft-ietf-httpapi-ratelimit-headers-10: t is the seconds
# until additional quota is made available), per algorithm, with real nginx: r drops by one
# per request made, t says when the next request passes for a client that spends r now, so it
# stays within the window (plus one request's share) instead of the two windows the sliding
# estimate takes to drain (`make run` said t=5207 for a 1 h window with 99% left); on a 429,
# t and Retry-After are the same number. No time is asserted: t is compared to the window and
# to the values the module computed itself, later ones never above earlier ones.
# Then the DRF-shaped 429 body (error_page + return, $throttle_retry_after), and the same in
# mode=strict (the Lua script computes t like core).

use strict;
use warnings;
use Test::More;
use JSON::PP;
use Throttle::Test;
use Throttle::Redis;

my $t = Throttle::Test->new(workers => 2);
my $redis = Throttle::Redis->new(t => $t);

$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis %%REDIS%% timeout=1s;
    throttle_zone $http_x_key zone=hour:1m   rate=100r/h;
    throttle_zone $http_x_key zone=day1:1m   rate=1r/d;
    throttle_zone $http_x_key zone=gcra:1m   rate=10r/m algorithm=gcra;
    throttle_zone $http_x_key zone=burst:1m  rate=60r/h algorithm=gcra burst=5;
    throttle_zone $http_x_key zone=small:1m  rate=3r/m;
    throttle_zone $http_x_key zone=big:1m    rate=1000r/h;
    throttle_zone $http_x_key zone=drf:1m    rate=2r/m;
    throttle_zone $http_x_key zone=s_hour:1m rate=100r/h mode=strict;
    throttle_zone $http_x_key zone=s_gcra:1m rate=10r/m mode=strict algorithm=gcra;

    # DRF's 429: {"detail": "Request was throttled. Expected available in N seconds."}
    map $throttle_retry_after $drf_wait {
        ""      "";
        "1"     " Expected available in 1 second.";
        default " Expected available in $throttle_retry_after seconds.";
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Reset $throttle_reset always;
        add_header X-Retry-After $throttle_retry_after always;
        location /hour/   { throttle zone=hour;   proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /day1/   { throttle zone=day1;   proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /gcra/   { throttle zone=gcra;   proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /burst/  { throttle zone=burst;  proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /two/    { throttle zone=small; throttle zone=big; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /s_hour/ { throttle zone=s_hour; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /s_gcra/ { throttle zone=s_gcra; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /drf/ {
            throttle zone=drf;
            error_page 429 @throttled;
            proxy_pass http://127.0.0.1:%%PORT_2%%;
        }
        location @throttled {
            default_type application/json;
            return 429 '{"detail":"Request was throttled.$drf_wait"}';
        }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF

# [status, r, t, Retry-After, q, w] of one response.
sub fields {
    my ($r, $zone) = @_;
    my ($rem, $reset) = ($r->{headers}{ratelimit} // '') =~ /^"\Q$zone\E";r=(\d+);t=(\d+)$/;
    my ($q, $w) = ($r->{headers}{'ratelimit-policy'} // '') =~ /^"\Q$zone\E";q=(\d+);w=(\d+)$/;
    return ($r->{status}, $rem, $reset, $r->{headers}{'retry-after'}, $q, $w);
}

# Sends requests until the first 429 (at most $max): checks r, t and Retry-After on the way.
# $bound: the largest t an admitted response may carry.
sub spend {
    my ($name, $path, $zone, $key, $max, $bound) = @_;
    my ($expect_r, $last_t, $rejected);
    for my $i (1 .. $max) {
        my $r = $t->get($path, 'X-Key' => $key);
        my ($status, $rem, $reset, $retry, $q, $w) = fields($r, $zone);
        if (!defined $rem || !defined $reset) {
            fail("$name #$i: RateLimit fields") or diag explain $r->{headers};
            return;
        }
        if ($status == 429) {
            is($rem, 0, "$name: 429 has r=0");
            is($retry, $reset, "$name: 429 has Retry-After = t ($retry)");
            is($r->{headers}{'x-retry-after'}, $retry, "$name: \$throttle_retry_after = Retry-After");
            ok($retry >= 1, "$name: Retry-After >= 1");
            ok(!defined $last_t || $reset <= $last_t,
                "$name: the 429's t ($reset) is not after the last 200's t ($last_t): "
                . 'that one said when this request would pass');
            $rejected = $reset;
            last;
        }
        is($status, 200, "$name #$i: passes") or return;
        $expect_r //= $q - 1;
        if ($rem != $expect_r || $i <= 3 || $rem == 0) {
            is($rem, $expect_r, "$name #$i: r=$expect_r (one less per request)") or return;
        }
        if ($reset < 1 || $reset > $bound || $i <= 3 || $rem == 0) {
            ok($reset >= 1 && $reset <= $bound, "$name #$i: t=$reset within 1..$bound") or return;
        }
        ok(!defined $r->{headers}{'retry-after'}, "$name #$i: no Retry-After on a 200") if $i == 1;
        is($r->{headers}{'x-reset'}, $reset, "$name #$i: \$throttle_reset = t") if $i == 1;
        is($r->{headers}{'x-retry-after'}, undef, "$name #$i: \$throttle_retry_after empty on a 200")
            if $i == 1;
        $expect_r--;
        $last_t = $reset;
    }
    ok(defined $rejected, "$name: rejected after the quota");
    return $rejected;
}

# Sliding window, 100r/h: t is at most the rest of the hour plus one request's share
# (3600 / 100 = 36 s), never up to two hours as the time for the estimate to reach 0 was.
spend('sliding 100r/h', '/hour/', 'hour', 'a', 101, 3600 + 36);

# 1r/d: the one request weighs on the whole next day, so the next passes at the start of the
# day after: t is up to two days, and says so (Retry-After agrees).
my ($status, $rem, $reset, $retry, $q, $w) = fields($t->get('/day1/', 'X-Key' => 'a'), 'day1');
is($status, 200, '1r/d: first passes');
is($rem, 0, '1r/d: r=0');
ok($reset > 86400 && $reset <= 2 * 86400, "1r/d: t=$reset is in the day after next (86400..172800)");
($status, undef, my $reset2, $retry) = fields($t->get('/day1/', 'X-Key' => 'a'), 'day1');
is($status, 429, '1r/d: second rejected');
is($retry, $reset2, '1r/d: Retry-After = t');
ok($retry <= $reset, '1r/d: Retry-After not after the first response\'s t');

# GCRA, 10r/m with the default bucket (10): a token every 6 s, so t is at most 6 whatever r
# is; the bucket's refill time is w=60 (RateLimit-Policy), not t.
spend('gcra 10r/m', '/gcra/', 'gcra', 'a', 11, 6);
(undef, undef, undef, undef, $q, $w) = fields($t->get('/gcra/', 'X-Key' => 'b'), 'gcra');
is("$q/$w", '10/60', 'gcra: RateLimit-Policy q=10 w=60');

# GCRA, 60r/h burst=5: a token every 60 s; w=300 (the bucket of 5 refills in 5 minutes).
spend('gcra 60r/h burst=5', '/burst/', 'burst', 'a', 6, 60);
(undef, undef, undef, undef, $q, $w) = fields($t->get('/burst/', 'X-Key' => 'b'), 'burst');
is("$q/$w", '5/300', 'gcra burst: RateLimit-Policy q=5 w=300');

# Two zones: the fields describe the one with fewer left (small, 3r/m); its rejection carries
# its t, equal to Retry-After.
spend('two zones, 3r/m shown', '/two/', 'small', 'a', 4, 60 + 20);

# mode=strict: the Lua script computes r and t as core does.
spend('strict sliding 100r/h', '/s_hour/', 's_hour', "a$$", 101, 3600 + 36);
spend('strict gcra 10r/m', '/s_gcra/', 's_gcra', "a$$", 11, 6);

# --- DRF's 429 shape from error_page + return, with the module's variables and headers.
my $r = $t->get('/drf/', 'X-Key' => 'a');
is($r->{status}, 200, 'drf: 1st passes');
$t->get('/drf/', 'X-Key' => 'a');
$r = $t->get('/drf/', 'X-Key' => 'a');
is($r->{status}, 429, 'drf: 3rd rejected by 2r/m');
like($r->{headers}{'content-type'} // '', qr{^application/json}, 'drf: application/json');
my $wait = $r->{headers}{'retry-after'} // '';
like($wait, qr/^[1-9]\d*$/, "drf: Retry-After $wait kept through error_page");
my $body = eval { decode_json($r->{body}) } // {};
my $unit = $wait eq '1' ? 'second' : 'seconds';
is($body->{detail}, "Request was throttled. Expected available in $wait $unit.",
    'drf: {"detail": "Request was throttled. Expected available in N seconds."}, N = Retry-After');
like($r->{headers}{ratelimit} // '', qr/^"drf";r=0;t=\Q$wait\E$/, 'drf: RateLimit t = Retry-After');

$t->done;
