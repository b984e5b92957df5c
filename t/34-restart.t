#!/usr/bin/perl
# Counts survive stopping nginx completely (graceful stop, shared memory gone) and starting it
# again, because they are in Redis: a strict zone keeps rejecting a key at its limit (sliding
# window and GCRA); a sync zone's counts reach Redis at the latest when the workers exit, and
# the restarted instance, which starts from an empty zone, rejects the key again as soon as
# its first flush has told it the global count.

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;

my $t = Throttle::Test->new(workers => 2)->need_fds(200);
my $redis = Throttle::Redis->new(t => $t);

$t->write_conf($redis->fill(<<'EOF'));
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis %%REDIS%% timeout=1s;
    throttle_zone $http_x_key zone=s:1m rate=5r/h  mode=strict;
    throttle_zone $http_x_key zone=g:1m rate=5r/h  mode=strict algorithm=gcra burst=3;
    throttle_zone $http_x_key zone=y:1m rate=20r/h mode=sync sync=100ms;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096 reuseport;
        add_header X-Status $throttle_status always;
        location /s/ { throttle zone=s; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /g/ { throttle zone=g; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /y/ { throttle zone=y; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF

sub xs { $_[0]{headers}{'x-status'} // '' }
sub statuses {
    my %n;
    $n{ "$_->{status}:" . xs($_) }++ for @_;
    return join ', ', map { "$_ x $n{$_}" } sort keys %n;
}
sub at_once {
    my ($n, $path, $key) = @_;
    return $t->concurrent($n, sub { ['GET', $path, { 'X-Key' => $key }] });
}

Throttle::Redis::clear_of_window_edge(3600, 30);
$t->run;

is(statuses(at_once(20, '/s/', 'k')), '200:PASSED x 5, 429:REJECTED x 15', 'strict: 5 of 20 pass');
is(statuses(at_once(20, '/g/', 'k')), '200:PASSED x 3, 429:REJECTED x 17', 'strict gcra: burst of 3 passes');
# Sent at once and the instance stopped right away: whatever the periodic flush has not sent
# yet goes at exit.
is(statuses(at_once(30, '/y/', 'k')), '200:PASSED x 20, 429:REJECTED x 10', 'sync: 20 of 30 pass');
my @pids = $t->worker_pids;

$t->stop;
ok(!$t->running && !grep({ kill 0, $_ } @pids), 'nginx stopped completely');
is($redis->sum(Throttle::Redis::zone_base('s', 'k') . ':*'), 5, 'stopped: Redis holds the strict count (5)');
is($redis->sum(Throttle::Redis::zone_base('y', 'k') . ':*'), 20, 'stopped: Redis holds the sync count (20), flushed by exit');
ok(($redis->get(Throttle::Redis::zone_base('g', 'k') . ':gcra') // 0) > 0, 'stopped: Redis holds the GCRA arrival time');

$t->run;
ok(!grep({ my $p = $_; grep { $_ == $p } @pids } $t->worker_pids), 'started again: new workers');

my $r = $t->get('/s/', 'X-Key' => 'k');
is("$r->{status}:" . xs($r), '429:REJECTED', 'restarted: strict zone still rejects the key');
like($r->{headers}{'retry-after'} // '', qr/^[1-9]\d*$/, 'restarted: with Retry-After');
$r = $t->get('/g/', 'X-Key' => 'k');
is("$r->{status}:" . xs($r), '429:REJECTED', 'restarted: strict gcra zone still rejects the key');
is($t->get('/s/', 'X-Key' => 'other')->{status}, 200, 'restarted: another key passes');
is($redis->sum(Throttle::Redis::zone_base('s', 'k') . ':*'), 5, 'restarted: Redis still holds 5');

# The sync zone starts empty on this host: it may admit until its first flush of the key
# tells it the global count, then it rejects.
$r = $t->get('/y/', 'X-Key' => 'k');
my $admitted = $r->{status} == 200 ? 1 : 0;
ok($r->{status} == 200 || $r->{status} == 429, 'restarted: sync zone answers ' . $r->{status});
my $in = 0;
Throttle::Redis::wait_for(sub { ($in = $redis->sum(Throttle::Redis::zone_base('y', 'k') . ':*')) == 20 + $admitted },
    timeout => 5);
is($in, 20 + $admitted, 'restarted: the first flush carried what it admitted (' . (20 + $admitted) . ')');
my @after = map { $t->get('/y/', 'X-Key' => 'k') } 1 .. 5;
is(statuses(@after), '429:REJECTED x 5', 'restarted: after its first flush the sync zone rejects the key');
like($after[0]{headers}{ratelimit} // '', qr/;r=0;/, 'restarted: RateLimit shows nothing left');
# A request for another key, once in Redis, shows a flush happened after the rejections.
is($t->get('/y/', 'X-Key' => 'k2')->{status}, 200, 'restarted: another key passes');
ok(Throttle::Redis::wait_for(sub { $redis->sum(Throttle::Redis::zone_base('y', 'k2') . ':*') == 1 }, timeout => 5),
    'restarted: and is flushed');
is($redis->sum(Throttle::Redis::zone_base('y', 'k') . ':*'), 20 + $admitted, 'restarted: rejected requests were not counted');

$t->done;
