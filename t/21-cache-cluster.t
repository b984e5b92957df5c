#!/usr/bin/perl
# The response cache on a Redis Cluster (issue 12): two nginx instances (two workers each) on a
# real 3-master cluster. A user's keys share one slot ({NS:ID}); the namespace generation is in
# another, mirrored by each worker (src/ngx/cache/nsgen.hpp). MISS then HIT with the bytes of the
# MISS; users' entries on every master; a user's write invalidates that user's entries only, on
# both instances; a purge on A is seen by B (the delay is printed, not asserted); with the
# pub/sub connections killed a purge is still seen, and so is a purge whose message is lost
# (the generation moved in Redis without one: the mirror's reads, every second); a master
# killed: its users go upstream (no 5xx), the others still HIT; the namespace generation
# unreadable: after the staleness bound (3 s) nobody is served from the cache. Every body
# carries its user's id: no user ever gets another's. Also: 48 concurrent lookups of 24 users (a
# turn's batch split by slot), and a write invalidating two namespaces (two slots). The local
# tier (throttle_cache_local, users=on) on the cluster: local hits, a purge on A and a user's
# write on A seen by B (the messages: classic PUBLISH reaches every node).

use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time);
use Throttle::Test;
use Throttle::Redis;

my $t1 = Throttle::Test->new(workers => 2)->need_fds(200);
# Without full coverage the other masters keep answering when one is down (as with replicas
# being promoted, minus the promotion).
my $cluster = Throttle::Redis->cluster(t => $t1, masters => 3, replicas => 0,
    args => ['--cluster-require-full-coverage', 'no']);
my $conf = $cluster->fill(<<'EOF2');
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis cluster %%REDIS_CLUSTER%% timeout=1s;
    add_header X-Cache $throttle_cache_status always;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096 reuseport;
        throttle_cache main;
        throttle_cache_user $cookie_sessionid;
        throttle_cache_valid 200 60s;
        location /c/     { proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /write/ { throttle_cache_invalidate main; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /o/     { throttle_cache other; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /write2/ { throttle_cache_invalidate main other;
                            proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /purge  { throttle_cache off; throttle_cache_purge $arg_ns; }
        location /l/     { throttle_cache loc; throttle_cache_local zone=cl:1m users=on;
                           add_header X-Tier $throttle_cache_tier always;
                           add_header X-Cache $throttle_cache_status always;
                           proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /lw/    { throttle_cache_invalidate loc; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% backlog=4096;
        location / { return 200 "user=$cookie_sessionid id=$request_id\n"; }
    }
}
EOF2
$t1->write_conf($conf)->run;
my $t2 = Throttle::Test->new(workers => 2)->write_conf($conf)->run;

my $foreign = 0;  # bodies of another user than the cookie's
my $fivexx = 0;
sub get_as {
    my ($t, $user, $path) = @_;
    my $r = $t1->request('GET', $path // '/c/', ['Cookie' => "sessionid=$user"], undef,
        port => $t->port);
    $fivexx++ if $r->{status} >= 500;
    $foreign++ if $r->{status} == 200 && $r->{body} !~ /^user=\Q$user\E id=/;
    return $r;
}
sub xc { $_[0]{headers}{'x-cache'} // '' }
sub wait_for { Throttle::Redis::wait_for(@_) }

# Until this user's path is a HIT on $t (each worker reads the namespace generation at its first
# lookup: until then a BYPASS); returns the hit's body.
sub hit_body {
    my ($t, $user, $path) = @_;
    my $body;
    wait_for(sub {
        my $r = get_as($t, $user, $path);
        $body = $r->{body} if xc($r) eq 'HIT';
        xc($r) eq 'HIT';
    }, timeout => 10, step => 0.05);
    return $body;
}

# The identity digests whose entries each master holds.
sub ids_on {
    my ($m) = @_;
    my %ids;
    for (grep { length } $m->cli('KEYS', 'throttle:cache:{main:*}:e:*')) {
        $ids{$1} = 1 if /^throttle:cache:\{main:([^}]+)\}:e:/;
    }
    return \%ids;
}

# --- MISS then HIT, user by user; which master holds each user's entries.
my @users = map { "u$_" } 1 .. 24;
my (%master_of, %body_of, %seen);
my @masters = $cluster->masters;
my $miss_then_hit = 0;
for my $u (@users) {
    my $miss;
    wait_for(sub { $miss = get_as($t1, $u); xc($miss) eq 'MISS' || xc($miss) eq 'HIT' },
        timeout => 10, step => 0.05);
    my $hit = hit_body($t1, $u);
    $miss_then_hit++ if xc($miss) eq 'MISS' && defined $hit && $hit eq $miss->{body};
    $body_of{$u} = $hit;
    my $found;
    wait_for(sub {
        for my $i (0 .. $#masters) {
            for my $id (keys %{ ids_on($masters[$i]) }) {
                next if $seen{$id};
                $seen{$id} = 1;
                $found = $i;
            }
        }
        defined $found;
    }, timeout => 5);
    $master_of{$u} = $found;
}
is($miss_then_hit, scalar @users, 'every user: MISS, then HIT with the MISS\'s bytes');
is(scalar(grep { defined $master_of{$_} } @users), scalar @users,
    'every user\'s entry found on one master');
my %per_master;
$per_master{$master_of{$_} // -1}++ for @users;
is(scalar(grep { $_ >= 0 } keys %per_master), 3, 'users\' entries on all three masters')
    or diag explain \%per_master;

# --- B serves what A stored (the same entries, B's mirror of the same generation).
is(scalar(grep { (hit_body($t2, $_) // '') eq $body_of{$_} } @users[0 .. 5]), 6,
    'instance B hits the entries A stored, byte for byte');

# --- A user's write invalidates that user's entries only, on both instances.
my $w = $t1->request('POST', '/write/', ['Cookie' => 'sessionid=u1'], 'x');
is($w->{status}, 200, 'u1 writes on A');
for my $t ($t1, $t2) {
    my $r = get_as($t, 'u1');
    isnt($r->{body}, $body_of{u1}, 'after the write, u1 never gets the pre-write body ('
        . ($t == $t1 ? 'A' : 'B') . ')');
    my $o = get_as($t, 'u2');
    is(xc($o) . ' ' . $o->{body}, "HIT $body_of{u2}", 'u2 still hits its entry ('
        . ($t == $t1 ? 'A' : 'B') . ')');
}
$body_of{u1} = hit_body($t1, 'u1');

# --- Many users' lookups at once (one event-loop turn's batch holds several users' slots: one
# call per slot): every one a HIT with its own body.
{
    my @r = $t1->concurrent(48, sub {
        my $u = $users[$_[0] % @users];
        ['GET', '/c/', ['Cookie' => "sessionid=$u"], undef, port => ($_[0] % 2 ? $t2 : $t1)->port];
    });
    my ($good, $hits) = (0, 0);
    for my $i (0 .. $#r) {
        my $u = $users[$i % @users];
        $good++ if $r[$i]{status} == 200 && $r[$i]{body} =~ /^user=\Q$u\E id=/;
        $hits++ if xc($r[$i]) eq 'HIT' && $r[$i]{body} eq ($body_of{$u} // '');
        $fivexx++ if $r[$i]{status} >= 500;
    }
    is($good, 48, '48 concurrent lookups of 24 users: each its own user\'s body');
    cmp_ok($hits, '>=', 24, 'at least every user on A hit its entry (B may still read its mirror)');
}

# --- A write invalidating two namespaces (two slots: one call each): both, that user only.
{
    my $o1 = hit_body($t1, 'u4', '/o/');
    my $o5 = hit_body($t1, 'u5', '/o/');
    my $c4 = hit_body($t1, 'u4');
    my $w2 = $t1->request('POST', '/write2/', ['Cookie' => 'sessionid=u4'], 'x');
    is($w2->{status}, 200, 'u4 writes to main and other');
    my $r = get_as($t1, 'u4', '/o/');
    isnt($r->{body}, $o1, 'u4: its entry in other is gone');
    $r = get_as($t1, 'u4');
    isnt($r->{body}, $c4, 'u4: its entry in main is gone');
    $r = get_as($t1, 'u5', '/o/');
    is(xc($r) . ' ' . $r->{body}, 'HIT ' . ($o5 // ''), 'u5 still hits in other');
    $body_of{u4} = hit_body($t1, 'u4');
}

# --- The local tier on the cluster: a purge and a write on A reach B's tier.
{
    my $local = sub {
        my ($t, $user) = @_;
        my $r;
        wait_for(sub { $r = get_as($t, $user, '/l/x'); ($r->{headers}{'x-tier'} // '') eq 'local' },
            timeout => 10, step => 0.02);
        return $r;
    };
    my $a1 = $local->($t1, 'lu1');
    my $b1 = $local->($t2, 'lu1');
    is($a1->{headers}{'x-tier'}, 'local', 'local tier on a cluster: A');
    is($b1->{headers}{'x-tier'}, 'local', 'local tier on a cluster: B');
    my $before = $b1->{body};
    my $p = $t1->request('POST', '/purge?ns=loc');
    is($p->{status}, 200, 'local tier: purge on A');
    ok(wait_for(sub { get_as($t2, 'lu1', '/l/x')->{body} ne $before }, timeout => 10, step => 0.005),
        'local tier: B stops serving the purged entry');
    my $b2 = $local->($t2, 'lu1');
    my $w = $t1->request('POST', '/lw/', ['Cookie' => 'sessionid=lu1'], 'x');
    is($w->{status}, 200, 'local tier: lu1 writes on A');
    isnt(get_as($t1, 'lu1', '/l/x')->{body}, $b2->{body}, 'local tier: A at once: not the old entry');
    ok(wait_for(sub { get_as($t2, 'lu1', '/l/x')->{body} ne $b2->{body} }, timeout => 10,
        step => 0.005), 'local tier: B after the message');
}

# --- A purge on A is seen by B: the message (or, at the latest, the mirror's next read).
sub purge_seen_by_b {
    my ($what, $lost) = @_;
    my $before = hit_body($t2, 'u3');
    ok(defined $before, "$what: u3 hits on B before the purge");
    if ($lost) {
        # A purge whose message never arrives: the generation moved in Redis, nothing published.
        like($cluster->cli('INCR', 'throttle:cache:{main}:g'), qr/^\d+$/, "$what: INCR");
    } else {
        my $p = $t1->request('POST', '/purge?ns=main');
        is($p->{status}, 200, "$what: purge on A") or diag $p->{body};
    }
    my $t0 = time;
    # On A at once: the purge's own answer moved A's mirror (same worker or the message).
    my $seen = wait_for(sub {
        my $r = get_as($t2, 'u3');
        xc($r) ne 'HIT' || $r->{body} ne $before;
    }, timeout => 10, step => 0.01);
    ok($seen, "$what: B stops serving the pre-purge entry");
    diag(sprintf('%s: purge seen by B after %.0f ms', $what, 1000 * (time - $t0)));
}
purge_seen_by_b('pub/sub up');

for my $m (@masters) {
    $m->cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
}
purge_seen_by_b('pub/sub connections killed');
purge_seen_by_b('a purge without a message (only the mirror\'s reads see it)', 1);

# --- A master killed: its users go upstream (their own body, no 5xx), the others still hit.
my $ns_key = 'throttle:cache:{main}:g';
my ($ns_master) = grep { ($masters[$_]->cli('EXISTS', $ns_key) // '') eq '1' } 0 .. $#masters;
ok(defined $ns_master, 'the namespace generation key is on one master');
# The first master when it can be (the fill channel's subscribers are on the first seed: they
# must move to another node).
my ($victim) = grep { $_ != ($ns_master // -1) && ($per_master{$_} // 0) > 0 } 0 .. 2;
my $channel = 'throttle:cache:filled';
sub numsub { my ($m) = @_; my (undef, $n) = $m->cli('PUBSUB', 'NUMSUB', $channel); $n // 0 }
ok(wait_for(sub { my $n = 0; $n += numsub($_) for @masters; $n == 4 }, timeout => 10),
    'the four workers\' fill channel subscribers are up');
my $to_move = numsub($masters[$victim]);
diag("$to_move fill channel subscribers on the master to be killed");
my @lost = grep { ($master_of{$_} // -1) == $victim } @users;
my @kept = grep { ($master_of{$_} // -1) != $victim } @users;
$body_of{$_} = hit_body($t1, $_) for @kept;
$masters[$victim]->kill;
# Checked once the cluster itself marked the master failed (cluster-node-timeout): the others
# must still hit then, not only in the moment after the kill.
my ($alive) = grep { $_ != $victim } 0 .. 2;
ok(wait_for(sub {
    my $nodes = eval { scalar $masters[$alive]->cli('CLUSTER', 'NODES') } // '';
    $nodes =~ /^\S+ \Q${\ $masters[$victim]->address }\E\S* \S*\bfail\b/m;
}, timeout => 15, step => 0.05), 'the cluster marked the killed master failed');
SKIP: {
    skip 'no subscriber on the killed master', 1 unless $to_move > 0;
    my $moved = wait_for(sub {
        my $n = 0;
        $n += numsub($masters[$_]) for grep { $_ != $victim } 0 .. 2;
        $n == 4;
    }, timeout => 15, step => 0.05);
    ok($moved, 'the subscribers\' node killed: every worker subscribed on another node');
}
my $others_hit = 0;
for my $u (@kept) {
    my $r = get_as($t1, $u);
    if (xc($r) eq 'HIT' && $r->{body} eq ($body_of{$u} // '')) {
        $others_hit++;
    } else {
        diag("kept user $u: status $r->{status}, X-Cache '" . xc($r) . "', body '$r->{body}'");
    }
}
is($others_hit, scalar @kept, 'users of the other masters still hit');
my $fallback = 0;
for my $u (@lost) {
    my $r = get_as($t1, $u);
    $fallback++ if $r->{status} == 200 && xc($r) ne 'HIT';
}
is($fallback, scalar @lost, 'users of the killed master go upstream (200, no hit)');

# --- The namespace generation unreadable (a value that is no generation: every read fails;
# killing its master instead would leave the last master in a minority, CLUSTERDOWN): no mirror
# is confirmed any more, so after the bound (3 s) nobody is served under it.
my ($third) = grep { $_ != $victim && $_ != ($ns_master // -1) } 0 .. 2;
my @third = grep { ($master_of{$_} // -1) == ($third // -1) } @users;
SKIP: {
    skip 'no user on the third master', 2 unless defined $ns_master && @third;
    ok(defined hit_body($t1, $third[0]), 'a user of the third master hits before');
    $masters[$ns_master]->cli('SET', $ns_key, 'not-a-generation');
    my $t0 = time;
    my $status = '';
    ok(wait_for(sub {
        my $r = get_as($t1, $third[0]);
        $status = xc($r);
        $r->{status} == 200 && $status ne 'HIT';
    }, timeout => 15, step => 0.05),
        'namespace generation unreadable: its users are not served from the cache any more');
    diag(sprintf('generation unreadable: hits stopped after %.0f ms (%s)',
        1000 * (time - $t0), $status));
}

is($fivexx, 0, 'no 5xx');
is($foreign, 0, 'no user ever got another user\'s body');

my $logs = $t1->error_log . $t2->error_log;
unlike($logs, qr/CROSSSLOT/, 'no CROSSSLOT in either log');
$t2->stop;
$t1->stop;
$t2->finish;
$t1->finish;
$cluster->stop;
undef $cluster;
done_testing();
