#!/usr/bin/perl
# mode=sync on a Redis Cluster (issue 12): two nginx instances (two workers each) share a
# 3-master cluster. A flush is split by slot (a script's keys and its batch-id key must share
# one): every key's count reaches the master serving its slot, exactly, over keys spread on all
# three masters, each batch id stored next to its keys. The final flush at a graceful stop
# reaches the right masters too.

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;

my $t1 = Throttle::Test->new(workers => 2)->need_fds(600);
my $cluster = Throttle::Redis->cluster(t => $t1, masters => 3, replicas => 0);
my $conf = $cluster->fill(<<'EOF');
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis cluster %%REDIS_CLUSTER%% timeout=1s;
    throttle_zone $http_x_key zone=s:1m    rate=1000r/h mode=sync sync=100ms;
    throttle_zone $http_x_key zone=slow:1m rate=1000r/h mode=sync sync=1h;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096 reuseport;
        location /s/    { throttle zone=s;    proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /slow/ { throttle zone=slow; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
$t1->write_conf($conf)->run;
my $t2 = Throttle::Test->new(workers => 2)->write_conf($conf)->run;

sub zb { Throttle::Redis::zone_base(@_) }
# The sum of a base's window counters, each read from the master that holds it.
sub count_of {
    my ($base) = @_;
    my $n = 0;
    for my $m ($cluster->masters) {
        $n += $m->cli('GET', $_) // 0 for grep { length } $m->cli('KEYS', "$base:[0-9]*");
    }
    return $n;
}

Throttle::Redis::clear_of_window_edge(3600, 40);

# 40 keys, key i gets 1 + i % 7 requests, sent at once over both instances.
my @keys = map { "k$_" } 0 .. 39;
my @plan = map { my $i = $_; (($keys[$i]) x (1 + $i % 7)) } 0 .. 39;
my @r = $t1->concurrent(scalar @plan, sub {
    ['GET', '/s/', { 'X-Key' => $plan[$_[0]] }, undef, port => ($_[0] % 2 ? $t2 : $t1)->port];
});
is(scalar(grep { $_->{status} == 200 } @r), scalar @plan, 'every request passed');
my %want;
$want{$_}++ for @plan;
my %got;
ok(Throttle::Redis::wait_for(sub {
    %got = map { $_ => count_of(zb('s', $_)) } @keys;
    !grep { $got{$_} != $want{$_} } @keys;
}, timeout => 15), 'every key reaches its exact count on the master of its slot')
    or diag explain { map { $_ => "$got{$_}/$want{$_}" } grep { $got{$_} != $want{$_} } @keys };

my (%on, %ids);
for my $m ($cluster->masters) {
    $on{ $m->port } = scalar grep { length } $m->cli('KEYS', 'throttle:{s:*}:[0-9]*');
    $ids{ $m->port } = scalar grep { length } $m->cli('KEYS', 'throttle:{s:*}:flush:*');
}
is(scalar(grep { $_ > 0 } values %on), 3, 'the counters are spread over all three masters')
    or diag explain \%on;
is(scalar(grep { $_ > 0 } values %ids), 3, 'batch ids stored on every master, next to their keys')
    or diag explain \%ids;

# sync=1h: nothing is flushed before the graceful stop; then everything is, to the right nodes.
my @slow = map { "slow$_" } 1 .. 12;
@r = $t1->concurrent(36, sub {
    ['GET', '/slow/', { 'X-Key' => $slow[$_[0] % 12] }, undef,
        port => ($_[0] % 2 ? $t2 : $t1)->port];
});
is(scalar(grep { $_->{status} == 200 } @r), 36, 'slow: 36 requests passed');
is(scalar(grep { count_of(zb('slow', $_)) == 0 } @slow), 12, 'slow: nothing flushed yet');
$t1->stop;
$t2->stop;
is(scalar(grep { count_of(zb('slow', $_)) == 3 } @slow), 12,
    'slow: the final flush at stop brought each key exactly 3, on its master');

my $logs = $t1->error_log . $t2->error_log;
unlike($logs, qr/\[(?:error|warn)\][^\n]*(?:throttle_redis|flush|CROSSSLOT)/,
    'no Redis error or flush warning in either log');
$t2->finish;
$t1->finish;
$cluster->stop;
undef $cluster;
done_testing();
