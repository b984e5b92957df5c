#!/usr/bin/perl
# throttle_metrics scraped by a real Prometheus (Debian's 2.42): nginx (two workers) with a
# local, a dry-run, a strict and a sync zone and a response cache on a real Redis; the test
# sends known traffic and, after a scrape that began once the traffic was answered, reads the
# counters back through Prometheus' HTTP API and compares them with what it sent and what nginx
# answered (X-Status, X-Cache), exactly. Redis killed: the strict zone's fallback outcomes, the
# connection gauge at 0, connection errors, the ThrottleRedisDisconnected alert of
# conf.examples/throttle-alerts.rules.yml pending; Redis back: the workers reconnect. A reload
# keeps the counters (Prometheus sees no counter reset). The exposition passes `promtool check
# metrics` with no lint finding, every metric the alerting rules use is in it, and Prometheus
# stored what the location served, sample for sample. Only 127.0.0.1 may read it.

use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time);
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;
use Throttle::Prometheus;

if (my $why = Throttle::Prometheus::unavailable()) {
    plan skip_all => $why;
}

my $workers = 2;
my $t = Throttle::Test->new(workers => $workers)->need_fds(200);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;
my $rules = "$Throttle::Test::REPO/conf.examples/throttle-alerts.rules.yml";

# Redis is killed on purpose: its connection errors are logged (at most [error]).
my $conf = $redis->fill(<<'EOF');
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis %%REDIS%% timeout=1s connect_timeout=100ms;
    throttle_zone $http_x_key zone=login:1m  rate=10r/h;
    throttle_zone $http_x_key zone=dry:1m    rate=3r/h;
    throttle_zone $http_x_key zone=strict:1m rate=5r/h mode=strict;
    throttle_zone $http_x_key zone=sync:1m   rate=100r/h mode=sync sync=100ms;
    add_header X-Status $throttle_status always;
    add_header X-Cache $throttle_cache_status always;
    proxy_http_version 1.1;

    server {
        listen 127.0.0.1:%%PORT%% backlog=1024;
        location /login/  { throttle zone=login; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /dry/    { throttle zone=dry; throttle_dry_run on; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /strict/ { throttle zone=strict; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /sync/   { throttle zone=sync; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /cached/ {
            throttle_cache main;
            throttle_cache_valid 200 60s;
            throttle_cache_max_size 10k;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /write/ {
            throttle_cache_user $cookie_sessionid;
            throttle_cache_invalidate main;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /purge { throttle_cache_purge main; }
        location = /metrics      { throttle_metrics; allow 127.0.0.1; deny all; }
        location = /metrics.json { throttle_metrics format=json; allow 127.0.0.1; deny all; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF
$t->write_conf($conf)->run;

# Prometheus' first scrape comes about 5 s after its start: start it before anything else.
my $prom = Throttle::Prometheus->new(t => $t, target => '127.0.0.1:' . $t->port,
    metrics_path => '/metrics', scrape_interval => '1s', rules => [$rules]);

my @zones = (['login', 'local'], ['dry', 'local'], ['strict', 'strict'], ['sync', 'sync']);
my @outcomes = qw(passed rejected dry_run_passed dry_run_rejected fallback_passed
    fallback_rejected skipped);
my @lookups = qw(HIT MISS EXPIRED STALE UPDATING BYPASS ERROR);

# What the test sent and nginx answered, per zone and outcome / per cache status.
my %requests = map { my $z = $_->[0]; map { ("$z/$_" => 0) } @outcomes } @zones;
my %lookups = map { ($_ => 0) } @lookups;

# X-Status as the outcome label it is counted under.
my %OUTCOME = (PASSED => 'passed', REJECTED => 'rejected', PASSED_DRY_RUN => 'dry_run_passed',
    REJECTED_DRY_RUN => 'dry_run_rejected', PASSED_FALLBACK => 'fallback_passed',
    REJECTED_FALLBACK => 'fallback_rejected');

# Sends $n requests one after the other to a zone's location; tallies what nginx answered.
# $throttle_status says PASSED for a request a dry-run location passed under the limit.
sub send_zone {
    my ($zone, $n, $key) = @_;
    my %seen;
    for (1 .. $n) {
        my $r = $t->get("/$zone/", defined $key ? ('X-Key' => $key) : ());
        my $st = $r->{headers}{'x-status'} // '';
        $st = 'PASSED_DRY_RUN' if $zone eq 'dry' && $st eq 'PASSED';
        my $outcome = $st eq '' ? (defined $key ? "none:$r->{status}" : 'skipped')
            : $OUTCOME{$st} // "unknown:$st";
        $seen{$outcome}++;
        $requests{"$zone/$outcome"}++;
    }
    return join ', ', map { "$_ x $seen{$_}" } sort keys %seen;
}

# GET through the cache: its X-Cache (and, in list context, the response); tallied.
sub cache_get {
    my ($path, @h) = @_;
    my $r = $t->get($path, @h);
    my $xc = $r->{headers}{'x-cache'} // '';
    $lookups{$xc}++ if length $xc;
    return wantarray ? ($xc, $r) : $xc;
}

# The counters as Prometheus stored them, summed over everything but the given labels.
sub prom_requests {
    my $v = $prom->vector('sum by (zone, outcome) (nginx_throttle_requests_total)');
    return { map { /outcome="([^"]*)",zone="([^"]*)"/ ? ("$2/$1" => $v->{$_}) : () } keys %$v };
}
sub prom_lookups {
    my $v = $prom->vector('sum by (status) (nginx_throttle_cache_lookups_total{namespace="main"})');
    return { map { /status="([^"]*)"/ ? ($1 => $v->{$_}) : () } keys %$v };
}

# A scrape that began after now (everything answered so far is in it); it must have worked.
sub scraped {
    my ($what) = @_;
    my $s = $prom->wait_for_scrape(after => time);
    is($s->{up}, 1, "$what: Prometheus scraped /metrics (up 1)")
        or diag("health $s->{health}, error $s->{error}");
    return $s;
}

# The same without a test (inside a poll).
sub scraped_quiet { $prom->wait_for_scrape(after => time) }

sub v { $prom->value(@_) }

# ------------------------------------------------------------------------------------------
# before any traffic: every zone's series exists, at 0

scraped('start');
is_deeply(prom_requests(), \%requests, 'before any request: every zone x outcome at 0');
is(v('count(nginx_throttle_requests_total)'), 4 * 7, 'four zones, seven outcomes each');
is(v('count(nginx_throttle_keys_capacity > 0)'), 4, 'every zone has a capacity');
is(v('sum(nginx_throttle_keys)'), 0, 'no keys yet');
is(v('nginx_throttle_redis_connected'), $workers, 'both workers connected to Redis');
is(v('nginx_throttle_redis_breaker_open'), 0, 'no breaker open');

# ------------------------------------------------------------------------------------------
# zones: passes, rejections, dry run, empty keys, strict, sync

Throttle::Redis::clear_of_window_edge(3600, 60);

is(send_zone('login', 13, 'a'), 'passed x 10, rejected x 3', 'login: 10 of 13 pass (10r/h)');
is(send_zone('login', 2, undef), 'skipped x 2', 'login: no key, the zone is skipped');
is(send_zone('dry', 5, 'b'), 'dry_run_passed x 3, dry_run_rejected x 2',
    'dry: 3 pass, 2 would have been rejected (dry run)');
is(send_zone('strict', 7, 'c'), 'passed x 5, rejected x 2', 'strict: 5 of 7 pass (5r/h)');
is(send_zone('sync', 20, 'd'), 'passed x 20', 'sync: 20 pass');
ok(Throttle::Redis::wait_for(sub { $redis->sum('throttle:{sync:*') == 20 }, timeout => 20),
    'sync: the 20 reached Redis (flushed)');

scraped('zones');
is_deeply(prom_requests(), \%requests,
    'nginx_throttle_requests_total by zone and outcome: what nginx answered, exactly');
is(v('sum(nginx_throttle_requests_total)'), 13 + 2 + 5 + 7 + 20, 'every request counted once');
# 10r/h: the 9th and 10th pass with 1 and 0 left (<= 10% of 10); 5r/h: the 5th (0 left);
# 3r/h in dry run: the 3rd (0 left).
is(v('nginx_throttle_near_limit_total{zone="login"}'), 2, 'login: 2 passed near the limit');
is(v('nginx_throttle_near_limit_total{zone="strict"}'), 1, 'strict: 1 passed near the limit');
is(v('nginx_throttle_near_limit_total{zone="dry"}'), 1, 'dry: 1 passed near the limit');
is(v('nginx_throttle_near_limit_total{zone="sync"}'), 0, 'sync: 20 of 100: none near the limit');
is(v('nginx_throttle_keys{zone="login"}'), 1, 'login: one key in the table (a)');
is(v('nginx_throttle_keys{zone="strict"}'), 1, 'strict: one key in the table (c)');
is(v('nginx_throttle_keys{zone="sync"}'), 1, 'sync: one key in the table (d)');
is(v('sum(nginx_throttle_evictions_total)'), 0, 'no eviction');
# Flushes carry keys (an empty one is not a flush): here only d, once per flush; all
# answered (the last answer may still be on its way to nginx when Redis has the 20: poll).
my $flushes = v('nginx_throttle_sync_flushes_total{zone="sync"}') // 0;
cmp_ok($flushes, '>=', 1, 'sync: flushed');
is(v('nginx_throttle_sync_errors_total{zone="sync"}'), 0, 'sync: no flush error');
is(v('nginx_throttle_sync_flush_keys_sum{zone="sync"}'), $flushes, 'sync: one key per flush');
is(v('nginx_throttle_sync_flush_keys_bucket{zone="sync",le="1"}'), $flushes,
    'sync: every flush in the le="1" bucket');
ok(Throttle::Prometheus::poll(sub {
    scraped_quiet();
    (v('nginx_throttle_sync_flush_duration_seconds_count{zone="sync"}') // -1) == $flushes;
}, timeout => 30), 'sync: a duration observed for every flush');
ok(defined v('nginx_throttle_sync_last_flush_age_seconds{zone="sync"}'),
    'sync: the last flush has an age');
# Redis decided 6 of the 7 for c (one at a time: no batching); it rejected the 6th, so the
# 7th was rejected here without asking it (blocked until the window moves).
is(v('nginx_throttle_strict_decisions_total{zone="strict"}'), 6, 'strict: 6 decisions by Redis');
is(v('nginx_throttle_strict_decision_duration_seconds_count{zone="strict"}'), 6,
    'strict: 6 decision durations observed');
is(v('nginx_throttle_strict_decision_duration_seconds_bucket{zone="strict",le="+Inf"}'), 6,
    'strict: the +Inf bucket holds them all');
is(v('nginx_throttle_strict_batch_size_count'), 6, 'strict: 6 script calls');
is(v('nginx_throttle_strict_batch_size_sum'), 6, 'strict: 6 decisions in them');
cmp_ok(v('nginx_throttle_redis_commands_total'), '>=', 6 + 1,
    'Redis commands: at least the 6 strict calls and a flush');
is(v('sum(nginx_throttle_redis_errors_total)'), 0, 'no Redis error yet');
is(v('nginx_throttle_redis_command_duration_seconds_count'),
    v('nginx_throttle_redis_commands_total') - v('nginx_throttle_redis_pending_commands'),
    'one duration per answered command');

# ------------------------------------------------------------------------------------------
# cache: misses, hits, bypass, refusals, invalidation, purge

is(cache_get('/cached/x'), 'MISS', 'cache: first GET of x is a MISS');
is(cache_get('/cached/x'), 'HIT', 'cache: then a HIT') for 1 .. 3;
is(cache_get('/cached/y?_size=500'), 'MISS', 'cache: y, a MISS');
is(cache_get('/cached/y?_size=500'), 'HIT', 'cache: y, a HIT');
my ($xc, $xr) = cache_get('/cached/x');
is($xc, 'HIT', 'cache: x once more, a HIT');
my $x_len = length $xr->{body};
is(cache_get('/cached/nostore?_cc=no-store'), 'MISS', 'cache: no-store: a MISS (not stored)');
is(cache_get('/cached/big?_size=20000'), 'MISS', 'cache: 20000 bytes over max_size: a MISS');
is(cache_get('/cached/x', Cookie => 'sessionid=s1'), 'BYPASS',
    'cache: credentials without a cache user: BYPASS');

# (A write with an empty identity invalidates nothing: this one is user u1's.)
my $w = $t->request('POST', '/write/', [Cookie => 'sessionid=u1'], 'x=1');
is($w->{status}, 200, 'a write of user u1 through throttle_cache_invalidate: 200');
my $p = $t->request('POST', '/purge');
like($p->{status}, qr/^2/, 'a purge of namespace main: 2xx');
is(cache_get('/cached/y?_size=500'), 'MISS', 'cache: after the purge, y is a MISS again');

scraped('cache');
is_deeply(prom_lookups(), \%lookups,
    'nginx_throttle_cache_lookups_total by status: what X-Cache said, exactly');
is(v('nginx_throttle_cache_stores_total{namespace="main"}'), 3, 'cache: 3 stores (x, y, y)');
is(v('nginx_throttle_cache_store_refusals_total{namespace="main",reason="uncacheable"}'), 1,
    'cache: one refused as uncacheable (no-store)');
is(v('nginx_throttle_cache_store_refusals_total{namespace="main",reason="too_large"}'), 1,
    'cache: one refused as too large');
is(v('nginx_throttle_cache_store_refusals_total{namespace="main",reason="generation_moved"}'), 0,
    'cache: none refused for a moved generation');
is(v('nginx_throttle_cache_invalidations_total{namespace="main"}'), 1, 'cache: one invalidation');
is(v('nginx_throttle_cache_purges_total{namespace="main"}'), 1, 'cache: one purge');
is(v('sum(nginx_throttle_cache_fill_waits_total{namespace="main"})'), 0, 'cache: no fill wait');
cmp_ok(v('nginx_throttle_cache_stored_bytes_total{namespace="main"}'), '>=', $x_len + 2 * 500,
    'cache: stored bytes at least the three bodies');

# ------------------------------------------------------------------------------------------
# Redis killed: fallback, the connection gauge, errors, the alert; Redis back: reconnected

ok(!grep({ $_->{labels}{alertname} eq 'ThrottleRedisDisconnected' } $prom->alerts),
    'Redis up: no ThrottleRedisDisconnected alert');
$redis->kill;
is(send_zone('strict', 3, 'e'), 'fallback_passed x 3', 'Redis down: e passes by the fallback');
is(send_zone('strict', 2, 'c'), 'fallback_rejected x 2',
    'Redis down: c (at its limit here) rejected by the fallback');
my $down = cache_get('/cached/z');
like($down, qr/^(?:ERROR|BYPASS)\z/, "Redis down: a cache lookup is $down");

ok(Throttle::Prometheus::poll(sub { (v('nginx_throttle_redis_connected') // -1) == 0 }),
    'Redis down: nginx_throttle_redis_connected falls to 0');
cmp_ok(v('sum(nginx_throttle_redis_errors_total{kind="connection"})'), '>', 0,
    'Redis down: connection errors counted');
my $alert = $prom->wait_for_alert('ThrottleRedisDisconnected',
    labels => { target => $redis->address });
ok($alert, 'Redis down: the ThrottleRedisDisconnected alert is pending (for: 1m)');
is($alert && $alert->{labels}{severity}, 'critical', 'with severity critical');

scraped('outage');
is_deeply(prom_requests(), \%requests, 'during the outage: fallback outcomes counted exactly');
is_deeply(prom_lookups(), \%lookups, 'during the outage: the lookup counted as nginx said');

$redis->restart;
ok(Throttle::Prometheus::poll(sub { (v('nginx_throttle_redis_connected') // -1) == $workers },
        timeout => 60),
    'Redis back: both workers connected again');
cmp_ok(v('nginx_throttle_redis_reconnects_total'), '>=', 1, 'Redis back: reconnects counted');
is(v('nginx_throttle_redis_breaker_open'), 0, 'Redis back: no breaker open');

# ------------------------------------------------------------------------------------------
# reload: the counters are kept (no counter reset in Prometheus), and count on

ok($t->reload, 'reload');
is(send_zone('login', 1, 'f'), 'passed x 1', 'after the reload: one more request');
scraped('reload');
is_deeply(prom_requests(), \%requests, 'after the reload: the counts kept, the new one added');
is(v('sum(resets(nginx_throttle_requests_total[10m]))'), 0,
    'no counter reset in Prometheus across the reload');

# ------------------------------------------------------------------------------------------
# the exposition itself: promtool, access, and Prometheus holds what it served

my $m = $t->get('/metrics');
is($m->{status}, 200, 'GET /metrics: 200');
is($m->{headers}{'content-type'}, 'text/plain; version=0.0.4; charset=utf-8',
    'Prometheus text format 0.0.4');
my ($st, $lint) = Throttle::Prometheus->run_promtool($m->{body}, 'check', 'metrics');
is($st, 0, 'promtool check metrics: exit 0') or diag($lint);
is($lint, '', 'promtool check metrics: no lint finding') or diag($lint);

my %family = map { /^# TYPE (\S+) (\S+)/ ? ($1 => $2) : () } split /\n/, $m->{body};
my %used = map { s/_(?:bucket|sum|count)\z//r => 1 } $t->read_file($rules) =~ /\b(nginx_throttle_\w+)/g;
for my $name (sort keys %used) {
    ok($family{$name}, "the alerting rules' $name is in the exposition");
}

{
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port,
        LocalAddr => '127.0.0.2', Proto => 'tcp', Timeout => 5);
    SKIP: {
        skip "cannot connect from 127.0.0.2: $!", 1 unless $s;
        print $s "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
        local $/;
        my $resp = Throttle::Test::parse_response(<$s> // '');
        is($resp->{status}, 403, 'GET /metrics from 127.0.0.2: 403 (deny all)');
    }
}

# Nothing changes now but the time: a scrape after this fetch stored the same samples.
my $text = $t->get('/metrics')->{body};
my $s = scraped('final');
# name{label="value",...} with the labels in name order (job and instance left out).
sub canonical {
    my ($name, %l) = @_;
    delete @l{qw(__name__ job instance)};
    return $name . (%l ? '{' . join(',', map { qq{$_="$l{$_}"} } sort keys %l) . '}' : '');
}
my %served;
for (split /\n/, $text) {
    next if /^#/ || !/\S/;
    my ($name, $labels, $value) = /^(\w+)(?:\{(.*)\})? (\S+)$/
        or do { fail("unparsed exposition line: $_"); next };
    next if $name eq 'nginx_throttle_sync_last_flush_age_seconds';    # moves with time
    my %l = ($labels // '') =~ /(\w+)="((?:[^"\\]|\\.)*)"/g;
    $served{ canonical($name, %l) } = 0 + $value;
}
my %stored;
my $res = $prom->query('{__name__=~"nginx_throttle_.+"} @ ' . sprintf('%.3f', $s->{time}));
for my $r (@$res) {
    next if $r->{metric}{__name__} eq 'nginx_throttle_sync_last_flush_age_seconds';
    $stored{ canonical($r->{metric}{__name__}, %{ $r->{metric} }) } = 0 + $r->{value}[1];
}
is(scalar(keys %stored), scalar(keys %served), 'Prometheus holds as many series as served')
    or diag(explain([grep { !exists $stored{$_} } sort keys %served],
        [grep { !exists $served{$_} } sort keys %stored]));
is_deeply(\%stored, \%served, 'and the same samples, value for value');

$prom->stop;
$t->allow(qr/throttle_redis: redis 127\.0\.0\.1:\d+: /);
$t->done;
