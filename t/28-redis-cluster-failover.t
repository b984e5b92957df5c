#!/usr/bin/perl
# A Redis Cluster's failover and resharding under nginx (issue 12): 3 masters with a replica
# each. A master killed: requests on its slots fall back (no 5xx, none hangs), the other
# masters' keys stay strict and exact; once its replica took over, its slots are strict again
# and exact. A slot holding a zone key moved to another master (MIGRATE, SETSLOT NODE): the
# worker follows the MOVED, no 5xx, and the count carries on exactly from the migrated one.
# While a slot is being migrated its requests take the fallback (the ASK is not followed), the
# importing master creates nothing (MIGRATE then succeeds), and the count carries on exactly.
# A slot moved while requests for its key keep coming: no 5xx, and the new master counts exactly
# the requests Redis admitted (the others met the migration and took the fallback).

use strict;
use warnings;
use Test::More;
use POSIX ();
use Throttle::Test;
use Throttle::Redis;

my $t = Throttle::Test->new(workers => 2)->need_fds(400);
my $cluster = Throttle::Redis->cluster(t => $t, masters => 3, replicas => 1);
$t->write_conf($cluster->fill(<<'EOF'))->run;
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis cluster %%REDIS_CLUSTER%% timeout=300ms connect_timeout=100ms;
    throttle_zone $http_x_key zone=s:1m rate=1000r/h mode=strict;
    throttle_zone $http_x_key zone=e:1m rate=5r/h mode=strict;
    throttle_zone $http_x_key zone=y:1m rate=1000r/h mode=sync sync=100ms;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096 reuseport;
        add_header X-Status $throttle_status always;
        location /s/ { throttle zone=s; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /e/ { throttle zone=e; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /y/ { throttle zone=y; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
# The node going down is logged (at error), once per incident.
$t->allow(qr/\[error\].*throttle_redis: /);

sub zb { Throttle::Redis::zone_base(@_) }
sub xs { $_[0]{headers}{'x-status'} // '' }
sub statuses {
    my %n;
    $n{ "$_->{status}:" . xs($_) }++ for @_;
    return join ', ', map { "$_ x $n{$_}" } sort keys %n;
}
sub at_once {
    my ($n, $path, $key) = @_;
    return $t->concurrent($n, sub { ['GET', $path, { 'X-Key' => $key }] }, timeout => 30);
}
my @masters = $cluster->masters;
my ($survivor) = grep { $_ != $masters[0] } @masters;
sub slot_of { scalar $survivor->cli('-c', 'CLUSTER', 'KEYSLOT', $_[0]) }
# The address serving $slot, as $node sees the cluster.
sub owner_of {
    my ($slot, $node) = @_;
    my $view = eval { ($node // $survivor)->cluster_nodes } // {};
    for my $addr (keys %$view) {
        next unless grep { $_ eq 'master' } @{ $view->{$addr}{flags} };
        return $addr if grep { $_->[0] <= $slot && $slot <= $_->[1] } @{ $view->{$addr}{slots} };
    }
    return '';
}
# A fresh key (prefix $p) whose base in $zone is served by $addr.
my $seq = 0;
sub key_on {
    my ($zone, $addr, $p) = @_;
    while (1) {
        my $k = $p . $seq++;
        return $k if owner_of(slot_of(zb($zone, $k))) eq $addr;
    }
}
sub count_of {
    my ($base) = @_;
    my $n = 0;
    for my $m (grep { $_->running } $cluster->nodes) {
        my @role = eval { $m->cli('ROLE') };
        next unless @role && $role[0] eq 'master';
        $n += $m->cli('GET', $_) // 0 for grep { length } $m->cli('KEYS', "$base:[0-9]*");
    }
    return $n;
}

Throttle::Redis::clear_of_window_edge(3600, 60);

my $dead = $masters[0]->address;
my $other = $masters[1]->address;
my $k_dead = key_on('e', $dead, 'd');
my $k_other = key_on('e', $other, 'o');
is(statuses($t->get('/e/', 'X-Key' => $k_dead)), '200:PASSED x 1', 'before: strict on the first master');
# sync: 4 requests flushed to the first master, replicated before it dies.
my $y_dead = key_on('y', $dead, 'y');
my @r = at_once(4, '/y/', $y_dead);
ok(Throttle::Redis::wait_for(sub { count_of(zb('y', $y_dead)) == 4 }),
    'sync: 4 flushed to the first master');
$masters[0]->cli('WAIT', 1, 5000);

# --- a master killed
$masters[0]->kill;
@r = at_once(20, '/e/', $k_dead);
is(scalar(grep { $_->{status} != 200 && $_->{status} != 429 } @r), 0,
    'its slots: no 5xx, every request answered') or diag statuses(@r);
is(scalar(grep { xs($_) =~ /_FALLBACK$/ } @r), 20, 'its slots: decided by the fallback')
    or diag statuses(@r);
my @y = at_once(3, '/y/', $y_dead);
is(scalar(grep { $_->{status} == 200 } @y), 3, 'sync: 3 more pass while its master is down');
@r = at_once(12, '/e/', $k_other);
is(statuses(@r), '200:PASSED x 5, 429:REJECTED x 7', 'another master: strict and exact');
is(count_of(zb('e', $k_other)), 5, 'another master: holds 5');

# --- the replica takes over
my $slot = slot_of(zb('e', $k_dead));
ok(Throttle::Redis::wait_for(sub { my $o = owner_of($slot); $o ne '' && $o ne $dead },
    timeout => 30, step => 0.1), 'the replica is promoted');
my $promoted = owner_of($slot);
# Every worker: each learns the new map when a command for those slots fails.
my $pk = key_on('s', $promoted, 'p');
ok(Throttle::Redis::wait_for(sub {
    my @p = at_once(10, '/s/', $pk);
    10 == grep { xs($_) eq 'PASSED' } @p;
}, timeout => 30, step => 0.05), 'its slots are strict again, in every worker');
ok(Throttle::Redis::wait_for(sub { count_of(zb('y', $y_dead)) == 7 }, timeout => 15),
    'sync: the counts kept during the outage reach the promoted master: 7')
    or diag count_of(zb('y', $y_dead));
my $k_new = key_on('e', $promoted, 'n');
@r = at_once(12, '/e/', $k_new);
is(statuses(@r), '200:PASSED x 5, 429:REJECTED x 7', 'after the failover: strict and exact');
is(count_of(zb('e', $k_new)), 5, 'after the failover: the new master holds 5');

# --- a slot holding a zone key moves to another master
my $k_move = key_on('e', $other, 'm');
@r = at_once(3, '/e/', $k_move);
is(statuses(@r), '200:PASSED x 3', 'before the move: 3 pass');
my $mslot = slot_of(zb('e', $k_move));
my ($src) = grep { $_->address eq $other } $cluster->nodes;
my ($dst) = grep { $_->running && $_->address eq owner_of(0) } $cluster->nodes;
$dst //= $survivor;
my $dst_id = $dst->cluster_nodes->{ $dst->address }{id};
my $src_id = $src->cluster_nodes->{ $src->address }{id};
$dst->cli('CLUSTER', 'SETSLOT', $mslot, 'IMPORTING', $src_id);
$src->cli('CLUSTER', 'SETSLOT', $mslot, 'MIGRATING', $dst_id);
my @moved = grep { length } $src->cli('CLUSTER', 'GETKEYSINSLOT', $mslot, 100);
ok(scalar @moved, 'the slot holds the zone key: ' . join ' ', @moved);
$src->cli('MIGRATE', '127.0.0.1', $dst->port, '', 0, 5000, 'KEYS', @moved);
$_->cli('CLUSTER', 'SETSLOT', $mslot, 'NODE', $dst_id) for grep { $_->running } $cluster->masters, $dst;
ok(Throttle::Redis::wait_for(sub { owner_of($mslot, $src) eq $dst->address }, timeout => 10),
    'the slot moved');
@r = at_once(10, '/e/', $k_move);
is(scalar(grep { $_->{status} >= 500 } @r), 0, 'after the move: no 5xx') or diag statuses(@r);
is(statuses(@r), '200:PASSED x 2, 429:REJECTED x 8',
    'after the move: the count carried on, exactly 2 more pass');
is(count_of(zb('e', $k_move)), 5, 'the new master holds 5');

# --- during a migration (slot MIGRATING on the source, IMPORTING on the target): the scripts
# declare PREFIX{ZONE:DIGEST}, which never exists, so the source answers ASK whatever it holds;
# the module does not follow it (the target would count from zero) and the requests take their
# fallback. Then the keys move (no BUSYKEY: the target created nothing) and the count carries on
# exactly.
my $k_mig = key_on('e', $other, 'q');
@r = at_once(2, '/e/', $k_mig);
is(statuses(@r), '200:PASSED x 2', 'before the migration: 2 pass');
my $qslot = slot_of(zb('e', $k_mig));
$dst->cli('CLUSTER', 'SETSLOT', $qslot, 'IMPORTING', $src_id);
$src->cli('CLUSTER', 'SETSLOT', $qslot, 'MIGRATING', $dst_id);
@r = at_once(10, '/e/', $k_mig);
is(scalar(grep { $_->{status} != 200 && $_->{status} != 429 } @r), 0,
    'during the migration: no 5xx, every request answered') or diag statuses(@r);
is(scalar(grep { xs($_) =~ /_FALLBACK$/ } @r), 10, 'during the migration: the fallback decides')
    or diag statuses(@r);
is(scalar(grep { length } $dst->cli('KEYS', zb('e', $k_mig) . '*')), 0,
    'during the migration: the importing master created nothing');
my @qkeys = grep { length } $src->cli('CLUSTER', 'GETKEYSINSLOT', $qslot, 100);
like(scalar $src->cli('MIGRATE', '127.0.0.1', $dst->port, '', 0, 5000, 'KEYS', @qkeys), qr/^OK/,
    'MIGRATE of the window key succeeds');
$_->cli('CLUSTER', 'SETSLOT', $qslot, 'NODE', $dst_id) for grep { $_->running } $cluster->masters, $dst;
ok(Throttle::Redis::wait_for(sub { owner_of($qslot, $src) eq $dst->address }, timeout => 10),
    'the migration is done');
ok(Throttle::Redis::wait_for(sub {
    xs($t->get('/s/', 'X-Key' => key_on('s', $dst->address, 'r'))) eq 'PASSED';
}, timeout => 10), 'after the migration: strict again');
@r = at_once(10, '/e/', $k_mig);
is(statuses(@r), '200:PASSED x 3, 429:REJECTED x 7',
    'after the migration: the count carried on, exactly 3 more pass');
is(count_of(zb('e', $k_mig)), 5, 'after the migration: the new master holds 5');

# --- sync during a migration: the flush is refused (ASK, not followed), its counts wait in
# shared memory and reach the new master once the slot is moved.
sub asks { my $i = $_[0]->cli('INFO', 'errorstats'); $i =~ /^errorstat_ASK:count=(\d+)/m ? $1 : 0 }
my $y_mig = key_on('y', $other, 'z');
@r = at_once(3, '/y/', $y_mig);
ok(Throttle::Redis::wait_for(sub { count_of(zb('y', $y_mig)) == 3 }), 'sync: 3 flushed');
my $yslot = slot_of(zb('y', $y_mig));
$dst->cli('CLUSTER', 'SETSLOT', $yslot, 'IMPORTING', $src_id);
$src->cli('CLUSTER', 'SETSLOT', $yslot, 'MIGRATING', $dst_id);
my $asks = asks($src);
@r = at_once(4, '/y/', $y_mig);
is(scalar(grep { $_->{status} == 200 } @r), 4, 'sync during the migration: 4 more pass');
ok(Throttle::Redis::wait_for(sub { asks($src) > $asks }, timeout => 10),
    'sync during the migration: the flush was tried and answered ASK');
is(scalar(grep { length } $dst->cli('KEYS', zb('y', $y_mig) . '*')), 0,
    'sync during the migration: nothing written on the importing master');
my @ykeys = grep { length } $src->cli('CLUSTER', 'GETKEYSINSLOT', $yslot, 100);
like(scalar $src->cli('MIGRATE', '127.0.0.1', $dst->port, '', 0, 5000, 'KEYS', @ykeys), qr/^OK/,
    'sync: MIGRATE succeeds');
$_->cli('CLUSTER', 'SETSLOT', $yslot, 'NODE', $dst_id) for grep { $_->running } $cluster->masters, $dst;
ok(Throttle::Redis::wait_for(sub { count_of(zb('y', $y_mig)) == 7 }, timeout => 15),
    'sync: the 4 kept during the migration reach the new master: 7')
    or diag count_of(zb('y', $y_mig));

# --- a slot moved while requests for its key keep coming (the migration runs in a child, the
# requests in rounds meanwhile; how much they overlap is not asserted): no 5xx, and every
# request Redis admitted (PASSED) is counted exactly once on the new master -- the fallback
# decided those that met the migration.
my $k_load = key_on('s', $src->address, 'l');
my $lslot = slot_of(zb('s', $k_load));
my $pid = fork // die "fork: $!";
if ($pid == 0) {
    eval {
        $dst->cli('CLUSTER', 'SETSLOT', $lslot, 'IMPORTING', $src_id);
        $src->cli('CLUSTER', 'SETSLOT', $lslot, 'MIGRATING', $dst_id);
        my @lk = grep { length } $src->cli('CLUSTER', 'GETKEYSINSLOT', $lslot, 100);
        $src->cli('MIGRATE', '127.0.0.1', $dst->port, '', 0, 5000, 'KEYS', @lk) if @lk;
        $_->cli('CLUSTER', 'SETSLOT', $lslot, 'NODE', $dst_id)
            for grep { $_->running } $cluster->masters, $dst;
    };
    POSIX::_exit($@ ? 1 : 0);
}
my @load;
push @load, at_once(50, '/s/', $k_load) for 1 .. 8;
waitpid $pid, 0;
is($?, 0, 'under load: the migration ran');
ok(Throttle::Redis::wait_for(sub { owner_of($lslot, $src) eq $dst->address }, timeout => 10),
    'under load: the slot moved');
push @load, at_once(50, '/s/', $k_load);
is(scalar(grep { $_->{status} != 200 } @load), 0, 'under load: every request passed, no 5xx')
    or diag statuses(@load);
my $admitted = grep { xs($_) eq 'PASSED' } @load;
note('under load: ' . statuses(@load));
cmp_ok($admitted, '>=', 50, 'under load: Redis decided at least the last round');
is(count_of(zb('s', $k_load)), $admitted,
    'under load: the new master counts exactly the requests Redis admitted');

$t->finish;
$cluster->stop;
undef $cluster;
done_testing();
