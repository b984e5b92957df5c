#!/usr/bin/perl
# mode=sync at scale (issue 14 item 4): a flush takes only the keys changed since the last
# one, a few hundred per hold of the zone's lock. With 100,000 distinct keys (one request
# each): Redis ends up with exactly what nginx admitted, every key is sent once,
# and once the traffic stops a flush sends nothing at all (Redis' commandstats do not move
# while the flush clock does). Then the same keys again while Redis is down: more keys change
# than the list holds, and the first flush after Redis is back (a walk of every slot) brings
# Redis exactly what nginx admitted meanwhile.
#
# Scale: TEST_SYNC_KEYS (default 100000).

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;
use Throttle::SyncKeys;
use Time::HiRes qw(time sleep);

plan skip_all => 'wrk not found' unless Throttle::SyncKeys::wrk_path();

my $keys = $ENV{TEST_SYNC_KEYS} // 100000;
my $t = Throttle::Test->new(workers => 2)->need_fds(400);
my $redis = Throttle::Redis->new(t => $t);

$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis %%REDIS%% timeout=1s;
    throttle_zone $arg_k zone=many:16m rate=1000r/d mode=sync sync=200ms;
    log_format st '$throttle_status';

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096 reuseport;
        location /k { throttle zone=many; access_log %%TESTDIR%%/st.log st; empty_gif; }
        location = /metrics { throttle_metrics; }
    }
}
EOF

my $sk = Throttle::SyncKeys->new(t => $t, redis => $redis, keys => $keys);
sub redis_sum { $sk->redis_sum }
sub admitted  { $sk->admitted }
sub run_wrk   { $sk->run_wrk(enough => $keys) }

# One sample of the zone's metrics: name (without labels) => value.
sub metrics {
    my $r = $t->get('/metrics');
    my %m;
    for (split /\n/, $r->{body} // '') {
        $m{$1} = $2 if /^(nginx_throttle_[a-z_]+)\{zone="many"[^}]*\} (\S+)$/;
    }
    return \%m;
}

# Script calls Redis ran (the flush script is the only one here).
sub evalsha { $redis->info_commandstats->{evalsha} // 0 }

# Waits until a flush started after $since (epoch seconds): returns its start time.
sub flush_after {
    my ($since) = @_;
    my $at;
    Throttle::Redis::wait_for(sub {
        my $now = time;
        my $age = metrics()->{nginx_throttle_sync_last_flush_age_seconds};
        return 0 unless defined $age;
        $at = $now - $age;
        $at > $since + 0.002;
    }, timeout => 20, step => 0.05) or return undef;
    return $at;
}

# A daily window: the run must not cross its edge (a delta of a window before the previous
# one is dropped), and waiting for the edge to pass happens only in the last minutes of a UTC
# day, where an hourly window made every run in the last 5-10 minutes of an hour wait that long.
Throttle::Redis::clear_of_window_edge(86400, 600);

is($t->get('/k?k=warm')->{status}, 200, 'a first request passes');
ok(Throttle::Redis::wait_for(sub { redis_sum() == 1 }, timeout => 10), 'and reaches Redis');

run_wrk();
my $admitted = admitted();
cmp_ok($admitted, '>=', $keys + 1, "$keys distinct keys admitted");

# Exactly what nginx admitted, once the last flush with traffic was answered.
my $final = Throttle::Redis::wait_for(sub { my $s = redis_sum(); $s >= $admitted ? $s : 0 },
    timeout => 120, step => 1);
is($final, $admitted, "Redis holds exactly what nginx admitted ($admitted)");

my $m = metrics();
cmp_ok($m->{nginx_throttle_keys}, '>=', $keys + 1, 'every key is in the table');
is($m->{nginx_throttle_evictions_total}, 0, 'no key evicted');
# One request per key: each key was sent in one flush only (no key sent twice, none whose
# counts had already gone sent again; a batch sent again after a timeout is not collected
# again). Keys are counted at collection, so this is already final. Only a send that never
# left (no connection: a flush error) gives counts back to be collected again.
my $errors = $m->{nginx_throttle_sync_errors_total};
diag("$errors flush error(s) on a loaded machine") if $errors;
if ($errors) {
    cmp_ok($m->{nginx_throttle_sync_flush_keys_sum}, '>=', $admitted, 'each key sent');
} else {
    is($m->{nginx_throttle_sync_flush_keys_sum}, $admitted, 'each key sent once');
}
cmp_ok($m->{nginx_throttle_sync_flushes_total}, '>=', 2, 'the keys went in several flushes');
is(redis_sum(), $admitted, 'Redis still holds exactly that');

# No traffic now: the flush clock moves on (two flushes after the last answer), and Redis
# sees no command at all.
my $flushes = $m->{nginx_throttle_sync_flushes_total};
my $calls = evalsha();
my $at = flush_after(time);
ok(defined $at, 'a flush ran after the traffic stopped');
ok(defined($at) && defined flush_after($at), 'and another one');
is(evalsha(), $calls, 'flushes without new traffic sent Redis nothing (commandstats)');
is(metrics()->{nginx_throttle_sync_flushes_total}, $flushes, 'and carried no key');
is(redis_sum(), $admitted, 'Redis still holds exactly what nginx admitted');

# One key again: the next flush sends it, alone, in one script call.
is($t->get('/k?k=warm')->{status}, 200, 'one more request for a known key');
ok(Throttle::Redis::wait_for(sub { redis_sum() == $admitted + 1 }, timeout => 10),
    'its count reaches Redis');
ok(Throttle::Redis::wait_for(sub { evalsha() == $calls + 1 }, timeout => 10),
    'in one script call');
my $after = metrics();
is($after->{nginx_throttle_sync_flush_keys_sum}, $admitted + 1, 'one key in that flush');
$at = flush_after(time);
ok(defined($at) && defined flush_after($at), 'two more flushes');
is(evalsha(), $calls + 1, 'and nothing more sent');

# --- The same keys again while Redis is down: the table's list of changed keys (a quarter of
# its slots: fewer than the keys) overflows, and the first flush once Redis is back walks every
# slot. Redis starts empty: it ends with exactly what nginx admitted meanwhile.
$redis->kill;
truncate $t->testdir . '/st.log', 0;
run_wrk();
my $admitted2 = admitted();
cmp_ok($admitted2, '>=', $keys, "$keys keys admitted again (decided locally)");
$redis->start;
$final = Throttle::Redis::wait_for(sub { my $s = redis_sum(); $s >= $admitted2 ? $s : 0 },
    timeout => 120, step => 1);
is($final, $admitted2, "Redis back: it holds exactly what nginx admitted meanwhile ($admitted2)");
$at = flush_after(time);
ok(defined($at) && defined flush_after($at), 'two more flushes');
is(redis_sum(), $admitted2, 'and still exactly that');

# For the record (never asserted): the longest hold of the zone's lock by a flush.
my ($hold) = sort { $b <=> $a } map { /lock hold so far in this worker: (\d+) us/ ? $1 : () }
    $t->log_lines(qr/longest sync lock hold/);
diag("longest lock hold of a flush: $hold us") if defined $hold;

$t->done;
