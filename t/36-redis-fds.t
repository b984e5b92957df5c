#!/usr/bin/perl
# The Redis connection leaks no descriptor: across Redis restarts (reconnects with backoff,
# circuit breaker) the worker's open files come back to the same number, and so do a
# reloaded worker's.
use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;

my $t = Throttle::Test->new(workers => 1);
my $redis = Throttle::Redis->new(t => $t);

$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis %%REDIS%% timeout=50ms connect_timeout=100ms;
    throttle_zone $http_x_key zone=s:1m rate=100000r/h mode=strict;
    throttle_zone $http_x_key zone=y:1m rate=100000r/h mode=sync sync=50ms;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Status $throttle_status always;
        location /s/ { throttle zone=s; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /y/ { throttle zone=y; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF

sub fds {
    my ($pid) = $t->worker_pids;
    opendir my $dh, "/proc/$pid/fd" or return -1;
    my $n = grep { /^\d+$/ } readdir $dh;
    return $n;
}

# Redis answers strict requests (it is connected) — poll for it.
sub decided_by_redis {
    Throttle::Redis::wait_for(sub {
        ($t->get('/s/', 'X-Key' => 'k')->{headers}{'x-status'} // '') eq 'PASSED'
    }, timeout => 40);
}

ok(decided_by_redis(), 'strict zone decided by Redis');
$t->get('/y/', 'X-Key' => 'k');
my $start = fds();
cmp_ok($start, '>', 0, "worker has $start open files");

for my $i (1 .. 5) {
    $redis->kill;
    # requests while Redis is gone: fallbacks, reconnect attempts, the breaker opening
    my @s = map { $t->get('/s/', 'X-Key' => "k$_")->{headers}{'x-status'} // '' } 1 .. 20;
    $t->get('/y/', 'X-Key' => 'k') for 1 .. 5;
    is(scalar(grep { /FALLBACK/ } @s), 20, "outage $i: all 20 decided by the fallback");
    $redis->restart;
    ok(decided_by_redis(), "outage $i: Redis decides again after its restart");
}
is(fds(), $start, 'same number of open files after 5 Redis restarts');

ok($t->reload, 'reload');
ok(decided_by_redis(), 'the new worker reaches Redis');
$t->get('/y/', 'X-Key' => 'k');
is(fds(), $start, "the reloaded worker has as many open files");

$t->allow(qr/throttle_redis: /);
$t->done;
