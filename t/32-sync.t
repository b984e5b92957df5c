#!/usr/bin/perl
# mode=sync: two nginx instances (two workers each) share one Redis. Decisions are local;
# every sync interval one worker per host sends the key's unsent counts and learns the global
# total. The over-admission stays within the README's bound, each instance's RateLimit header
# and $throttle_remaining reflect the global count once it has flushed, Redis sees far fewer
# than one command per request, a flush sends at most 256 keys per script call, and unsent
# counts reach Redis when nginx stops gracefully and are carried across a reload.

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;
use Time::HiRes qw(time);

my $t1 = Throttle::Test->new(workers => 2)->need_fds(400);
my $redis = Throttle::Redis->new(t => $t1);

my $conf = <<'EOF';
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis %%REDIS%% timeout=1s;
    throttle_zone $http_x_key zone=s:1m    rate=100r/h    mode=sync sync=100ms;
    throttle_zone $http_x_key zone=hi:1m   rate=100000r/h mode=sync sync=100ms;
    throttle_zone $http_x_key zone=slow:1m rate=10r/h     mode=sync sync=1h;
    throttle_zone $http_x_key zone=many:1m rate=100r/h    mode=sync sync=1h;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096 reuseport;
        add_header X-Status $throttle_status always;
        add_header X-Remaining $throttle_remaining always;
        add_header X-Gen GEN always;
        location /s/    { throttle zone=s;    proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /hi/   { throttle zone=hi;   proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /slow/ { throttle zone=slow; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /many/ { throttle zone=many; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
sub gen { $redis->fill($conf =~ s/GEN/$_[0]/r) }

$t1->write_conf(gen(1))->run;
my $t2 = Throttle::Test->new(workers => 2)->write_conf(gen(1))->run;

# $n requests at once for $key on $path; even ones to the first instance, odd to the second
# (or all to one instance with only => $t).
sub send_at_once {
    my ($n, $path, $key, %opt) = @_;
    return $t1->concurrent($n, sub {
        my $to = $opt{only} // ($_[0] % 2 ? $t2 : $t1);
        ['GET', $path, { 'X-Key' => $key }, undef, port => $to->port];
    });
}

sub passed { scalar grep { $_->{status} == 200 } @_ }
sub bad    { grep { $_->{status} != 200 && $_->{status} != 429 } @_ }
sub remaining { ($_[0]{headers}{ratelimit} // '') =~ /;r=(\d+);/ ? $1 : -1 }

# Polls until Redis holds $want for the key's windows (a flush of every host has happened).
sub redis_reaches {
    my ($zone, $key, $want, $timeout) = @_;
    my $got;
    Throttle::Redis::wait_for(sub { ($got = $redis->sum(Throttle::Redis::zone_base($zone, $key) . ':*')) == $want },
        timeout => $timeout // 5);
    return $got;
}

Throttle::Redis::clear_of_window_edge(3600, 30);

# --- over-admission across two hosts, 100r/h, sync=100ms.
# Each round sends k requests to each instance at once, then waits until Redis holds every
# admitted request (so both hosts flushed after the round). A host learns the other's counts
# at its own flush, so entering a round it misses at most the other host's last round (k),
# and within a round neither sees the other: with H = 2 hosts the total stays within
# N + (H - 1) x k = 100 + 10 (README: N + (H - 1) x min(N, r x S), r x S = k here).
my $k = 10;
my ($total, $rounds, @per_round) = (0, 0);
while ($rounds < 30) {
    $rounds++;
    my @r = send_at_once(2 * $k, '/s/', 'bound');
    my @b = bad(@r);
    is(scalar @b, 0, "round $rounds: only 200 and 429") or diag explain [map { $_->{raw} } @b[0 .. 2]];
    my $n = passed(@r);
    push @per_round, $n;
    $total += $n;
    my $in_redis = redis_reaches('s', 'bound', $total);
    is($in_redis, $total, "round $rounds: Redis holds every admitted request ($total)")
        or last;
    last if $n == 0;
}
note("admitted per round: @per_round");
ok($per_round[-1] == 0, "a round admitted nothing at last ($rounds rounds)");
ok($total >= 100, "at least the quota was admitted ($total)");
ok($total <= 100 + $k, "over-admission within the bound: $total <= 100 + (2 - 1) x $k");

# --- convergence: once a host has flushed, its headers show the global count
# 30 on the first instance, 20 on the second
my @r = (send_at_once(30, '/s/', 'conv', only => $t1), send_at_once(20, '/s/', 'conv', only => $t2));
is(passed(@r), 50, 'conv: 50 requests pass');
is(redis_reaches('s', 'conv', 50), 50, 'conv: both flushed, Redis holds 50');
for my $step ([$t1, 'first', 51, 52], [$t2, 'second', 53, 54]) {
    my ($t, $name, $after_learn, $after_check) = @$step;
    is($t->get('/s/', 'X-Key' => 'conv')->{status}, 200, "conv: a request to the $name instance");
    is(redis_reaches('s', 'conv', $after_learn), $after_learn,
        "conv: the $name instance flushed it and learned the total ($after_learn)");
    my $r = $t->get('/s/', 'X-Key' => 'conv');
    is(remaining($r), 100 - $after_check,
        "conv: the $name instance's RateLimit shows the global count (r=" . (100 - $after_check) . ')');
    is($r->{headers}{'x-remaining'}, 100 - $after_check, "conv: and so does \$throttle_remaining");
    is($r->{headers}{'x-status'}, 'PASSED', 'conv: $throttle_status PASSED');
    is(redis_reaches('s', 'conv', $after_check), $after_check, "conv: Redis holds $after_check");
}

# --- Redis commands per request: one script call per host per interval, whatever the traffic
# (the bound below is in intervals elapsed; calls per request depend on the machine's speed:
# printed by the note, measured by bench/run.sh)
$redis->reset_stats;
my $start = time;
my $sent = 0;
for (1 .. 40) {
    my @r = send_at_once(50, '/hi/', 'load');
    is(passed(@r), 50, "load: batch of 50 passes") unless passed(@r) == 50;
    $sent += 50;
}
my $elapsed = time - $start;
is(redis_reaches('hi', 'load', $sent), $sent, "load: Redis holds all $sent requests");
my $stats = $redis->info_commandstats;
my $calls = ($stats->{evalsha} // 0) + ($stats->{eval} // 0);
my $flushes_max = 2 * (int(($elapsed + 0.5) / 0.1) + 2);
note(sprintf 'load: %d requests in %.2fs, %d script calls (%.3f per request), at most %d allowed',
    $sent, $elapsed, $calls, $calls / $sent, $flushes_max);
ok($calls <= $flushes_max, "load: at most one call per host per 100ms interval ($calls <= $flushes_max)");
ok($calls >= 2, 'load: both hosts flushed');

# --- unsent counts are carried across a reload (exit flush of the old workers)
my @slow = map { $t2->get('/slow/', 'X-Key' => 'r') } 1 .. 6;
is(passed(@slow), 6, 'reload: 6 requests pass (10r/h, sync=1h: no periodic flush)');
is($redis->sum(Throttle::Redis::zone_base('slow', 'r') . ':*'), 0, 'reload: nothing in Redis yet');
ok($t2->write_conf(gen(2))->reload, 'reload the second instance');
is(redis_reaches('slow', 'r', 6), 6, 'reload: the old workers flushed the 6 at exit');
@slow = map { $t2->get('/slow/', 'X-Key' => 'r') } 1 .. 5;
is($slow[0]{headers}{'x-gen'}, 2, 'reload: the new configuration serves');
is(join(' ', map { $_->{status} } @slow), '200 200 200 200 429',
    'reload: the counts were kept: 4 more pass, the 11th is rejected');

# --- a flush sends at most 256 keys per script call; a graceful stop flushes everything
for my $i (0 .. 2) {
    my @m = $t1->concurrent(100, sub { ['GET', '/many/', { 'X-Key' => 'm' . ($i * 100 + $_[0]) }] });
    is(passed(@m), 100, 'many: 100 keys, one request each') unless passed(@m) == 100;
}
is(scalar(() = $redis->keys('throttle:{many:*')), 0, 'many: nothing in Redis before the stop');
$redis->reset_stats;
$t1->stop;
my @mk = $redis->keys('throttle:{many:*}:[0-9]*');    # the windows (not the batch ids)
is(scalar @mk, 300, 'stop: 300 keys in Redis after the graceful stop');
is(scalar(grep { ($redis->get($_) // 0) == 1 } @mk[0 .. 9]), 10, 'stop: each holds 1 (first 10 checked)');
is($redis->sum('throttle:{many:*'), 300, 'stop: 300 requests in all');
$stats = $redis->info_commandstats;
is(($stats->{evalsha} // 0) + ($stats->{eval} // 0), 2, 'stop: two script calls for 300 keys (256 + 44)');
my ($pttl) = map { $redis->cli('PTTL', $_) } $mk[0];
ok($pttl > 0 && $pttl <= 2 * 3600_000 + 1000, "stop: keys have their expiry ($pttl ms)");

$t2->stop;
is($redis->sum(Throttle::Redis::zone_base('slow', 'r') . ':*'), 10, 'stop: the second instance flushed the 4 after the reload (10)');

$t2->finish;
$t1->done;
