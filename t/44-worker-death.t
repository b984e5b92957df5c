#!/usr/bin/perl
# kill -9 of a worker (a crash, the OOM killer): what it counted stays counted. Local and sync
# zones live in shared memory, so the respawned workers go on from the same counts, and a sync
# zone's unsent counts (sync=1h: none left before the kill) still reach Redis, with the next
# flush (here: the one of a graceful stop). (A cache filler killed with kill -9:
# t/59-cache-fill-lease.t.)

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;

my $t = Throttle::Test->new(workers => 2);
my $redis = Throttle::Redis->new(t => $t);

my $conf = $redis->fill(<<'EOF');
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis %%REDIS%% timeout=1s;
    throttle_zone $http_x_key zone=loc:1m rate=10r/h;
    throttle_zone $http_x_key zone=syn:1m rate=10r/h mode=sync sync=1h;

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Worker $pid always;
        location /l/ { throttle zone=loc; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /s/ { throttle zone=syn; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF
$t->allow(qr/worker process \d+ exited on signal 9/);
$t->write_conf($conf)->run;

sub remaining { ($_[0]{headers}{ratelimit} // '') =~ /;r=(\d+);/ ? $1 : undef }

my %served_by;
for my $path ('/l/', '/s/') {
    for my $i (1 .. 6) {
        my $r = $t->get($path, 'X-Key' => 'k');
        is($r->{status}, 200, "before the kill: $path request $i passes");
        $served_by{ $r->{headers}{'x-worker'} // '' }++;
    }
}
note('served by workers: ' . join ', ', map { "$_ x $served_by{$_}" } sort keys %served_by);
is($redis->sum(Throttle::Redis::zone_base('syn', 'k') . ':*'), 0, 'sync=1h: nothing flushed before the kill');

# Every worker killed: no worker that counted them is left.
my @old = $t->worker_pids;
is(scalar @old, 2, 'two workers');
for my $pid (@old) {
    ok(kill('KILL', $pid), "kill -9 $pid");
}
ok(Throttle::Redis::wait_for(sub {
        my @now = $t->worker_pids;
        my %old = map { $_ => 1 } @old;
        @now == 2 && !grep { $old{$_} } @now;
    }, timeout => 10), 'the master respawned two workers');

for my $path ('/l/', '/s/') {
    my $r = $t->get($path, 'X-Key' => 'k');
    is($r->{status}, 200, "after the kill: $path request 7 passes");
    is(remaining($r), 3, "after the kill: $path r=3 (the 6 counted before it kept)");
    $t->get($path, 'X-Key' => 'k') for 8 .. 10;
    $r = $t->get($path, 'X-Key' => 'k');
    is($r->{status}, 429, "after the kill: $path request 11 rejected (10r/h)");
}
is($t->get('/l/', 'X-Key' => 'other')->{status}, 200, 'another key passes');

# The sync zone's unsent counts (6 before the kill, 4 after) reach Redis when nginx stops
# gracefully: the killed workers lost none of them.
ok($t->quit, 'graceful stop');
is($redis->sum(Throttle::Redis::zone_base('syn', 'k') . ':*'), 10, 'Redis holds the 10 requests the sync zone admitted');

my @died = grep { /exited on signal/ } split /\n/, $t->error_log;
is(scalar @died, 2, 'only the two killed workers died') or diag join "\n", @died;
$t->finish;
done_testing;
