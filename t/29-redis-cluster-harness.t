#!/usr/bin/perl
# The Redis Cluster harness (issue 12; Throttle::Redis->cluster), for the nginx cluster tests
# to come: 3 masters without replicas, then 3 masters with a replica each. Every node says
# cluster_state:ok with all 16384 slots assigned, the masters' slots cover 0..16383 exactly
# once, a key written through one node is read through another, and stop() kills every node.

use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use Throttle::Redis;

for my $replicas (0, 1) {
    my $cluster = Throttle::Redis->cluster(masters => 3, replicas => $replicas);
    my @nodes = $cluster->nodes;
    is(scalar @nodes, 3 * (1 + $replicas), "replicas=$replicas: nodes started");
    is(scalar(my @m = $cluster->masters), 3, "replicas=$replicas: 3 masters");
    is(scalar(my @r = $cluster->replicas), 3 * $replicas, "replicas=$replicas: replicas");
    for my $node (@nodes) {
        my $info = $node->cli('CLUSTER', 'INFO');
        like($info, qr/^cluster_state:ok\r?$/m, $node->address . ' cluster_state:ok');
        like($info, qr/^cluster_slots_assigned:16384\r?$/m, $node->address . ' 16384 slots');
    }
    for my $r ($cluster->replicas) {
        is(($r->cli('ROLE'))[0], 'slave', $r->address . ' is a replica');
    }

    # The masters' ranges, as each node reports them, cover every slot once.
    for my $node (@nodes) {
        my $view = $node->cluster_nodes;
        my (%owner, @seen);
        for my $addr (keys %$view) {
            for my $range (@{ $view->{$addr}{slots} }) {
                $owner{$addr} = 1;
                $seen[$_]++ for $range->[0] .. $range->[1];
            }
        }
        is(scalar(grep { ($seen[$_] // 0) == 1 } 0 .. 16383), 16384,
            $node->address . ' sees every slot served once');
        is(join(' ', sort keys %owner), join(' ', sort map { $_->address } $cluster->masters),
            $node->address . ' sees the masters serve them');
    }
    like($cluster->seeds, qr/^127\.0\.0\.1:\d+ 127\.0\.0\.1:\d+ 127\.0\.0\.1:\d+$/, 'seeds');

    # Keys on every master, through redirections.
    for my $k (map { "harness$_" } 1 .. 12) {
        $cluster->cli('SET', $k, "v-$k");
    }
    is($cluster->cli('GET', "harness$_"), "v-harness$_", "harness$_ read back") for 1 .. 12;
    my %where;
    for my $m ($cluster->masters) {
        $where{ $m->port } += scalar grep { length } $m->cli('KEYS', 'harness*');
    }
    is(scalar(grep { $_ > 0 } values %where), 3, "replicas=$replicas: keys on all 3 masters");

    my @ports = map { $_->port } @nodes;
    $cluster->stop;
    ok(!$_->running, $_->address . ' stopped') for @nodes;
    for my $port (@ports) {
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port", Timeout => 1);
        ok(!$s, "127.0.0.1:$port refuses after stop");
    }
}

done_testing();
