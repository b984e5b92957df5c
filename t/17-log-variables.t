#!/usr/bin/perl
# An access log that says why a request was limited: $throttle_zone (the deciding zone: the one
# that rejected, or for a passed request the one with the fewest requests left -- the zone the
# RateLimit fields describe), $throttle_limit (its quota), $throttle_remaining, $throttle_reset,
# $throttle_status and $throttle_cache_age (the Age of a cache hit), evaluated at log time:
# requests that pass, 429s, dry run, two zones in one location, an internal redirect
# (try_files into another zone, error_page answering a 429), a cache hit of age >= 1 s, and
# locations where no zone applies (all empty). Each log line is checked against the response's
# own RateLimit, RateLimit-Policy and Age fields.

use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Throttle::Test;
use Throttle::Redis;

my $t = Throttle::Test->new;
my $redis = Throttle::Redis->new(t => $t);
$t->write_file('limited.txt', "slow down\n");

$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_redis %%REDIS%% timeout=1s;
    throttle_cache_secret test-secret-0123456789abcdef;

    throttle_zone $http_x_user zone=user:1m  rate=5r/h;
    throttle_zone $http_x_ip   zone=ip:1m    rate=3r/h;
    throttle_zone $http_x_key  zone=dry:1m   rate=1r/h;
    throttle_zone $http_x_key  zone=ep:1m    rate=1r/h;
    throttle_zone $http_x_key  zone=outer:1m rate=3r/h;
    throttle_zone $http_x_key  zone=inner:1m rate=1r/h;
    throttle_zone $http_x_key  zone=cached:1m rate=1000r/m;

    log_format why '$http_x_id $status zone=[$throttle_zone] limit=[$throttle_limit] '
                   'remaining=[$throttle_remaining] reset=[$throttle_reset] '
                   'age=[$throttle_cache_age] status=[$throttle_status] '
                   'cache=[$throttle_cache_status]';

    server {
        listen 127.0.0.1:%%PORT%%;
        root %%TESTDIR%%;
        access_log %%TESTDIR%%/why.log why;

        location /two/  { throttle zone=user; throttle zone=ip; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /dry/  { throttle zone=dry; throttle_dry_run on; proxy_pass http://127.0.0.1:%%PORT_2%%; }

        # a 429 answered by the operator's page (an internal redirect)
        location /ep/ {
            throttle zone=ep;
            error_page 429 /limited.txt;
            proxy_pass http://127.0.0.1:%%PORT_2%%;
        }
        location = /limited.txt { internal; }

        # an internal redirect into a location with a zone of its own
        location /redir/ { throttle zone=outer; try_files /nonexistent @inner; }
        location @inner  { throttle zone=inner; proxy_pass http://127.0.0.1:%%PORT_2%%; }

        location /cache/ {
            throttle zone=cached;
            throttle_cache main;
            throttle_cache_valid 200 60s;
            proxy_pass http://127.0.0.1:%%PORT_2%%;
        }

        # STALE: a HEAD for an expired entry in its stale window
        location /stale/ {
            throttle_cache main;
            throttle_cache_valid 200 1s;
            throttle_cache_stale 60s;
            proxy_pass http://127.0.0.1:%%PORT_2%%;
        }

        location /none/ { proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        access_log off;
        location / { return 200 "ok\n"; }
    }
}
EOF

my $seq = 0;

# Sends a GET (or 'HEAD /path') with a fresh X-Id; returns the response and its access log fields (polled for
# until the line appears; nginx logs a variable that is not found as "-", here "").
sub logged {
    my ($uri, @h) = @_;
    my $method = $uri =~ s/^HEAD // ? 'HEAD' : 'GET';    # 'HEAD /path' for a HEAD
    my $id = 'r' . ++$seq;
    my $r = $t->request($method, $uri, ['X-Id' => $id, @h]);
    my $deadline = time + 10;
    my $line;
    while (!defined $line && time < $deadline) {
        ($line) = grep { /^\Q$id\E / } split /\n/, $t->read_file('why.log');
        sleep 0.02 unless defined $line;
    }
    return ($r, undef) unless defined $line;
    my ($status) = $line =~ /^\S+ (\d+) /;
    my %f = (http => $status, $line =~ /(\w+)=\[([^\]]*)\]/g);
    $_ eq '-' and $_ = '' for values %f;
    return ($r, \%f);
}

# What the response's own fields say: the zone, q, r and t of RateLimit / RateLimit-Policy.
sub fields_of {
    my ($r) = @_;
    my %f;
    @f{qw(zone remaining reset)} = ($r->{headers}{ratelimit} // '') =~ /^"([^"]+)";r=(\d+);t=(\d+)$/;
    my ($pz, $q) = ($r->{headers}{'ratelimit-policy'} // '') =~ /^"([^"]+)";q=(\d+);w=\d+$/;
    $f{limit} = $q if defined $pz && defined $f{zone} && $pz eq $f{zone};
    return \%f;
}

# The log fields of the deciding zone match the response's RateLimit fields.
sub agrees {
    my ($r, $f, $name) = @_;
    my $h = fields_of($r);
    is_deeply([@$f{qw(zone limit remaining reset)}], [@$h{qw(zone limit remaining reset)}],
        "$name: zone, limit, remaining, reset as in RateLimit / RateLimit-Policy");
}

sub check {
    my ($name, $uri, $headers, $want) = @_;
    my ($r, $f) = logged($uri, %$headers);
    ok($f, "$name: logged") or return;
    my %got = map { $_ => $f->{$_} } keys %$want;
    is_deeply(\%got, $want, "$name: log line");
    return ($r, $f);
}

# ------------------------------------------------------------------------------------------
# two zones in one location: user (5r/h) and ip (3r/h), keyed on different headers

my @u1 = ('X-User' => 'u1');
for my $n (1 .. 3) {
    my ($r, $f) = check("two zones, u1 from i1, request $n", '/two/a', { @u1, 'X-Ip' => 'i1' },
        { http => 200, status => 'PASSED', zone => 'ip', limit => 3, remaining => 3 - $n,
          age => '' });
    agrees($r, $f, "two zones, request $n") if $f;
    like($f->{reset} // '', qr/^\d+$/, "two zones, request $n: reset is a number of seconds") if $f;
}
# from another ip, the user zone has fewer left (1 of 5) than the new ip's (2 of 3)
my ($r, $f) = check('two zones, u1 from i2', '/two/a', { @u1, 'X-Ip' => 'i2' },
    { http => 200, status => 'PASSED', zone => 'user', limit => 5, remaining => 1 });
agrees($r, $f, 'two zones, u1 from i2') if $f;
# i1 is spent: rejected by ip, though user still had 1 left
($r, $f) = check('two zones, u1 from i1 again', '/two/a', { @u1, 'X-Ip' => 'i1' },
    { http => 429, status => 'REJECTED', zone => 'ip', limit => 3, remaining => 0 });
agrees($r, $f, 'two zones, 429 by ip') if $f;
ok(($f->{reset} // 0) >= 1, 'two zones, 429: reset at least 1 s') if $f;
is($f->{reset}, $r->{headers}{'retry-after'}, 'two zones, 429: reset is Retry-After') if $f;
# the rejection consumed nothing: user's last request from i3, then user rejects
($r, $f) = check('two zones, u1 from i3', '/two/a', { @u1, 'X-Ip' => 'i3' },
    { http => 200, status => 'PASSED', zone => 'user', limit => 5, remaining => 0 });
($r, $f) = check('two zones, u1 from i3 again', '/two/a', { @u1, 'X-Ip' => 'i3' },
    { http => 429, status => 'REJECTED', zone => 'user', limit => 5, remaining => 0 });
agrees($r, $f, 'two zones, 429 by user') if $f;
# no key for either zone: no zone applied
check('two zones, no keys', '/two/a', {},
    { http => 200, status => '', zone => '', limit => '', remaining => '', reset => '',
      age => '' });

# ------------------------------------------------------------------------------------------
# dry run: the zone that would have rejected is named, the request passes

($r, $f) = check('dry run 1', '/dry/a', { 'X-Key' => 'd' },
    { http => 200, status => 'PASSED', zone => 'dry', limit => 1, remaining => 0 });
agrees($r, $f, 'dry run 1') if $f;
($r, $f) = check('dry run 2', '/dry/a', { 'X-Key' => 'd' },
    { http => 200, status => 'REJECTED_DRY_RUN', zone => 'dry', limit => 1, remaining => 0 });
agrees($r, $f, 'dry run 2') if $f;
ok(($f->{reset} // 0) >= 1, 'dry run 2: reset at least 1 s') if $f;

# ------------------------------------------------------------------------------------------
# error_page answers the 429: the log still describes the rejection

check('error_page, 1', '/ep/a', { 'X-Key' => 'e' },
    { http => 200, status => 'PASSED', zone => 'ep', limit => 1, remaining => 0 });
($r, $f) = check('error_page, 2', '/ep/a', { 'X-Key' => 'e' },
    { http => 429, status => 'REJECTED', zone => 'ep', limit => 1, remaining => 0 });
is($r->{body}, "slow down\n", "error_page, 2: the operator's page answered");
agrees($r, $f, 'error_page, 2') if $f;
ok(($f->{reset} // 0) >= 1, 'error_page, 2: reset at least 1 s') if $f;

# ------------------------------------------------------------------------------------------
# try_files into a location with its own zone: outer (3r/h) then inner (1r/h)

($r, $f) = check('redirect, 1', '/redir/a', { 'X-Key' => 'x' },
    { http => 200, status => 'PASSED', zone => 'inner', limit => 1, remaining => 0 });
agrees($r, $f, 'redirect, 1') if $f;
($r, $f) = check('redirect, 2', '/redir/a', { 'X-Key' => 'x' },
    { http => 429, status => 'REJECTED', zone => 'inner', limit => 1, remaining => 0 });
agrees($r, $f, 'redirect, 2') if $f;

# ------------------------------------------------------------------------------------------
# a location without a zone

check('no zone', '/none/a', { 'X-Key' => 'n', 'X-User' => 'n', 'X-Ip' => 'n' },
    { http => 200, status => '', zone => '', limit => '', remaining => '', reset => '',
      age => '', cache => '' });

# ------------------------------------------------------------------------------------------
# the cache: a MISS has no age; a HIT logs the Age it was sent with (polled until >= 1)

check('cache miss', '/cache/a', { 'X-Key' => 'c' },
    { http => 200, cache => 'MISS', age => '', zone => 'cached', limit => 1000 });
my $hit;
my $deadline = time + 15;
while (time < $deadline) {
    ($r, $f) = logged('/cache/a', 'X-Key' => 'c');
    $hit = [$r, $f] if ($r->{headers}{age} // 0) >= 1;
    last if $hit;
    sleep 0.1;
}
ok($hit, 'cache: a HIT with Age >= 1 came');
if ($hit) {
    ($r, $f) = @$hit;
    is($f->{cache}, 'HIT', 'cache hit: $throttle_cache_status HIT');
    is($f->{age}, $r->{headers}{age}, 'cache hit: $throttle_cache_age is the Age sent');
    is($f->{zone}, 'cached', 'cache hit: the zone applied too');
    agrees($r, $f, 'cache hit');
}

# a HEAD served from a stale entry (STALE; no zone in that location)
check('stale: miss', '/stale/a', {}, { http => 200, cache => 'MISS', age => '', zone => '' });
my $stale;
$deadline = time + 15;
while (time < $deadline) {
    ($r, $f) = logged('HEAD /stale/a');
    $stale = [$r, $f] if ($f->{cache} // '') eq 'STALE';
    last if $stale;
    sleep 0.1;
}
ok($stale, 'stale: a HEAD was served STALE once the entry expired');
if ($stale) {
    ($r, $f) = @$stale;
    like($f->{age}, qr/^\d+$/, 'stale: $throttle_cache_age is set');
    is($f->{age}, $r->{headers}{age}, 'stale: $throttle_cache_age is the Age sent');
    is($f->{zone}, '', 'stale: no zone');
}

$t->done;
