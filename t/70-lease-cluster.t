#!/usr/bin/perl
# mode=lease on a Redis Cluster: every name of a key shares its hash tag {ZONE:DIGEST}, so a
# lease call and a return are one script on the key's master, as with one Redis. Two nginx
# instances (two workers each) and a 3-master cluster: keys spread over the three masters,
# each hammered by both instances: exactly each key's quota passes, and the cluster counts
# exactly that; an idle lease is given back to its master.

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;

my $t1 = Throttle::Test->new(workers => 2)->need_fds(1100);
my $cluster = Throttle::Redis->cluster(t => $t1, masters => 3, replicas => 0);
my $conf = $cluster->fill(<<'EOF');
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis cluster %%REDIS_CLUSTER%% timeout=1s;
    throttle_zone $http_x_key zone=q:1m rate=500r/d mode=lease lease=50;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096 reuseport;
        add_header X-Status $throttle_status always;
        location /q/ { throttle zone=q; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
$t1->write_conf($conf)->run;
my $t2 = Throttle::Test->new(workers => 2)->write_conf($conf)->run;

sub count_of {    # the sum of a key's window counters, on whichever master holds them
    my ($key) = @_;
    my $base = Throttle::Redis::zone_base('q', $key);
    my $n = 0;
    for my $m ($cluster->masters) {
        $n += $m->cli('GET', $_) // 0 for grep { /:\d+\z/ } $m->cli('KEYS', "$base:*");
    }
    return $n;
}
sub master_of {
    my ($key) = @_;
    my $base = Throttle::Redis::zone_base('q', $key);
    my @m = $cluster->masters;
    for my $i (0 .. $#m) {
        return $i if grep { length } $m[$i]->cli('KEYS', "$base:*");
    }
    return -1;
}

Throttle::Redis::clear_of_window_edge(86400, 120);

# --- 6 keys, rounds of 240 requests (40 per key) across both instances until none passes
my @keys = map { "campaign$_" } 1 .. 6;
my (%ok, $quiet);
for (1 .. 100) {
    my @r = $t1->concurrent(240, sub {
        my $i = shift;
        ['GET', '/q/', { 'X-Key' => $keys[$i % 6] }, undef, port => ($i % 2 ? $t2 : $t1)->port];
    });
    my $pass = 0;
    for my $i (0 .. $#r) {
        die "unexpected status $r[$i]{status}\n" unless $r[$i]{status} =~ /^(200|429)$/;
        next unless $r[$i]{status} == 200;
        $ok{ $keys[$i % 6] }++;
        $pass++;
    }
    $quiet = $pass ? 0 : ($quiet // 0) + 1;
    last if $quiet == 2;
}
for my $k (@keys) {
    is($ok{$k}, 500, "$k: exactly 500 admitted across two instances");
    is(count_of($k), 500, "$k: its master counted exactly 500");
}
my %masters;
$masters{ master_of($_) }++ for @keys;
note('keys per master: ' . join(', ', map { "$_: $masters{$_}" } sort keys %masters));
cmp_ok(scalar(grep { $_ >= 0 } keys %masters), '>=', 2, 'the keys are on more than one master');

# --- an idle lease goes back to its master
my $a = 0;
for (1 .. 3) {
    my @r = $t1->concurrent(40, sub { ['GET', '/q/', { 'X-Key' => 'idle' }, undef] });
    $a += grep { $_->{status} == 200 } @r;
}
my $held = count_of('idle') - $a;
cmp_ok($held, '>', 0, "instance 1 holds $held units of 'idle'");
my $deadline = time + 10;
sleep 0.1 while count_of('idle') > $a && time < $deadline;
is(count_of('idle'), $a, 'the idle lease went back: the master counts what was admitted');

$t2->finish;
$t1->done;
