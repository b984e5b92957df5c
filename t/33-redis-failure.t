#!/usr/bin/perl
# Redis failing is a non-event for traffic: killed under load, paused with SIGSTOP (a hang,
# not a refusal), restarted empty. No 5xx, no worker crash, no request hangs; with
# fallback=local the limit is still enforced from this host's counts ($throttle_status
# PASSED_FALLBACK / REJECTED_FALLBACK); fallback=open passes, fallback=closed rejects; while
# Redis hangs only the requests before the circuit breaker opened wait for the command
# timeout; once Redis answers again, strict zones are decided by Redis, and sync zones push
# the counts made during the outage. Errors are logged once per incident.

use strict;
use warnings;
use Test::More;
use POSIX ();
use Throttle::Test;
use Throttle::Redis;
use Time::HiRes qw(time);

my $workers = 2;
my $t = Throttle::Test->new(workers => $workers)->need_fds(400);
my $redis = Throttle::Redis->new(t => $t);

# timeout=1s: a request may wait for Redis that long, then the fallback decides. That is far
# above what any request takes on a loaded machine without waiting (tens of ms), so a request
# that waited for Redis is told apart from one that did not: it took over $timeout / 2.
my $timeout = 1;
# No request may take longer (client-measured): a hang, not load. Half the client's timeout,
# after which a request that hangs is cut (status 0): 10 s for one request and for the load
# batches, 60 s for the concurrent ones (hundreds at once: seconds on a loaded machine).
my %hang = (one => 5, concurrent => 30);

$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis %%REDIS%% timeout=1s connect_timeout=100ms;
    throttle_zone $http_x_key zone=s:1m rate=100r/h mode=strict;
    throttle_zone $http_x_key zone=o:1m rate=100r/h mode=strict fallback=open;
    throttle_zone $http_x_key zone=c:1m rate=100r/h mode=strict fallback=closed;
    throttle_zone $http_x_key zone=y:1m rate=100r/h mode=sync sync=100ms;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096 reuseport;
        add_header X-Status $throttle_status always;
        location /s/ { throttle zone=s; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /o/ { throttle zone=o; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /c/ { throttle zone=c; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /y/ { throttle zone=y; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
my $port = $redis->port;
my $redis_log = qr/\[error\].*throttle_redis: redis 127\.0\.0\.1:$port: /;
$t->allow($redis_log);

sub xs { $_[0]{headers}{'x-status'} // '' }
sub statuses {
    my %n;
    $n{ "$_->{status}:" . xs($_) }++ for @_;
    return join ', ', map { "$_ x $n{$_}" } sort keys %n;
}
sub at_once {
    my ($n, $path, $key) = @_;
    return $t->concurrent($n, sub { ['GET', $path, { 'X-Key' => ref $key ? $key->($_[0]) : $key }] });
}
sub slowest { my $m = 0; $m = $_->{elapsed} > $m ? $_->{elapsed} : $m for @_; $m }
sub no_hang {
    my ($what, $kind, $slowest) = @_;
    ok($slowest < $hang{$kind}, sprintf('%s: no request hangs (slowest %.1f ms; Redis timeout %.0f ms)',
        $what, 1000 * $slowest, 1000 * $timeout));
}

# Polls with a request on a fresh key until Redis decides strict zones again.
my $poll = 0;
sub strict_again {
    my $r;
    Throttle::Redis::wait_for(sub {
        $r = $t->get('/s/', 'X-Key' => 'poll' . $poll++);
        xs($r) eq 'PASSED';
    }, timeout => 15, step => 0.05);
    return xs($r);
}

Throttle::Redis::clear_of_window_edge(3600, 30);

is(xs($t->get('/s/', 'X-Key' => 'hello')), 'PASSED', 'strict zone decided by Redis');
my @y = at_once(10, '/y/', 'y');
is(statuses(@y), '200:PASSED x 10', 'sync zone: 10 pass');
my $in = 0;
Throttle::Redis::wait_for(sub { ($in = $redis->sum(Throttle::Redis::zone_base('y', 'y') . ':*')) == 10 });
is($in, 10, 'sync zone: flushed, Redis holds 10');

# --- Redis killed under load. A child sends 30 batches of 20 requests at once — 5 for the
# key "limit", 15 for keys that stay under their limit — and logs each batch; Redis is killed
# once 8 batches are done, so the strict zone's limit for "limit" is reached on fallback.
my $mark = $t->log_mark;
my $load = $t->testdir . '/load.txt';
my $child = fork // die "fork: $!";
if ($child == 0) {
    open my $fh, '>', $load or POSIX::_exit(1);
    $fh->autoflush(1);
    for my $b (1 .. 30) {
        my @r = $t->concurrent(20, sub {
            my $i = shift;
            ['GET', '/s/', { 'X-Key' => $i < 5 ? 'limit' : 'L' . ($b * 15 + $i) % 60 }];
        }, timeout => 10);
        print $fh join(' ', $b, $_, $r[$_]{status}, xs($r[$_]) || '-', $r[$_]{elapsed}), "\n"
            for 0 .. $#r;
    }
    POSIX::_exit(0);
}
my $batches = sub { my @l = split /\n/, $t->read_file('load.txt'); @l ? (split ' ', $l[-1])[0] : 0 };
ok(Throttle::Redis::wait_for(sub { $batches->() >= 8 }, timeout => 20, step => 0.002),
    'load: 8 batches done');
my $killed_at = $batches->();
$redis->kill;
my $done = Throttle::Redis::wait_for(sub { waitpid($child, POSIX::WNOHANG()) == $child }, timeout => 60);
ok($done && $? == 0, 'load: the client finished') or kill 'KILL', $child;
my @lines = map { [split ' '] } split /\n/, $t->read_file('load.txt');
is(scalar @lines, 600, "load: 600 answers (Redis killed after batch $killed_at)");
my %status;
$status{"$_->[2]:$_->[3]"}++ for @lines;
note('load: ' . join ', ', map { "$_ x $status{$_}" } sort keys %status);
is(scalar(grep { $_->[2] != 200 && $_->[2] != 429 } @lines), 0, 'load: only 200 and 429, no 5xx');
my ($max) = sort { $b <=> $a } map { $_->[4] } @lines;
no_hang('load', one => $max);
is(scalar(grep { $_->[1] < 5 && $_->[2] == 200 } @lines), 100,
    'load: exactly 100 of 150 requests for "limit" passed, across the kill');
is(scalar(grep { $_->[1] >= 5 && $_->[2] != 200 } @lines), 0, 'load: every other key passed');
ok($status{'200:PASSED'} && $status{'200:PASSED_FALLBACK'},
    'load: decided by Redis before the kill, by the local fallback after it');
is(scalar(grep { $_->[3] !~ /^(?:PASSED|REJECTED)(?:_FALLBACK)?$/ } @lines), 0,
    'load: $throttle_status is PASSED, REJECTED or *_FALLBACK');

# --- while Redis is down: the local fallback is exact on this host (shared by its workers)
my @r = at_once(300, '/s/', 'fresh');
is(statuses(@r), '200:PASSED_FALLBACK x 100, 429:REJECTED_FALLBACK x 200',
    'down: fallback=local, exactly 100 of 300 pass for a fresh key');
no_hang('down', concurrent => slowest(@r));
@r = at_once(150, '/o/', 'open');
is(statuses(@r), '200:PASSED_FALLBACK x 150', 'down: fallback=open, all pass');
@r = at_once(20, '/c/', 'closed');
is(statuses(@r), '429:REJECTED_FALLBACK x 20', 'down: fallback=closed, all rejected');
is(scalar(grep { ($_->{headers}{'retry-after'} // '') =~ /^[1-9]\d*$/ } @r), 20,
    'down: fallback=closed answers carry Retry-After');
@y = at_once(15, '/y/', 'y');
is(statuses(@y), '200:PASSED x 15', 'down: the sync zone keeps deciding locally');

my @err = $t->log_lines($redis_log, $mark);
ok(@err >= 1 && @err <= 2 * $workers,
    'killed: logged once per incident (' . scalar(@err) . " [error] lines for 1100 requests)")
    or diag join "\n", @err;

# --- Redis back, empty: strict zones are decided by Redis again; the sync zone pushes the
# 15 counted during the outage (the 10 before it were lost with Redis' data)
$redis->restart;
is(strict_again(), 'PASSED', 'restarted: strict zone decided by Redis again');
$in = 0;
Throttle::Redis::wait_for(sub { ($in = $redis->sum(Throttle::Redis::zone_base('y', 'y') . ':*')) >= 15 }, timeout => 10);
is($in, 15, 'restarted: the sync zone pushed the 15 counted during the outage');
my $r = $t->get('/y/', 'X-Key' => 'y');
like($r->{headers}{ratelimit} // '', qr/;r=74;/, 'restarted: the host still counts all 26 (r=74)');

# --- Redis paused (SIGSTOP): connections hang. Each request waits at most the timeout. A
# command's timeout alone does not drop the connection (a slow reply is read and dropped); a
# connection from which nothing was read for max(1 s, 4 x timeout) = 4 s is dropped (failure
# 1), and the reconnects' handshakes time out (failures 2 and 3): the circuit opens and
# requests no longer wait at all. Of 40 sequential requests, at most 4 + 2 per worker wait the
# 1 s timeout.
$mark = $t->log_mark;
$redis->pause;
my @seq = map { $t->get('/s/', 'X-Key' => 'paused') } 1 .. 40;
push @seq, at_once(100, '/s/', 'paused');
$redis->resume;
is(scalar(grep { $_->{status} != 200 && $_->{status} != 429 } @seq), 0, 'paused: only 200 and 429');
no_hang('paused: 40 one by one', one => slowest(@seq[0 .. 39]));
no_hang('paused: 100 at once', concurrent => slowest(@seq[40 .. $#seq]));
my $waited = grep { $_->{elapsed} >= $timeout / 2 } @seq[0 .. 39];
ok($waited >= 1 && $waited <= (4 + 2) * $workers,
    "paused: only the requests before the circuit opened waited for Redis ($waited of 40)")
    or diag join ' ', map { sprintf '%.0f', 1000 * $_->{elapsed} } @seq[0 .. 39];
is(statuses(@seq), '200:PASSED_FALLBACK x 100, 429:REJECTED_FALLBACK x 40',
    'paused: fallback=local, exactly 100 of 140 pass');
is(strict_again(), 'PASSED', 'resumed: strict zone decided by Redis again (polled)');
@err = $t->log_lines($redis_log, $mark);
ok(@err >= 1 && @err <= 2 * $workers, 'paused: logged once per incident ('
    . scalar(@err) . ' [error] lines)') or diag join "\n", @err;
# A timed-out command fails alone (a [warn] line); the hung connection is dropped once nothing
# was read from it for 4 s (4 x timeout).
like(join("\n", @err), qr/connection stuck, dropped: nothing read for/,
    'paused: the log says the connection was stuck');
ok(scalar($t->log_lines(qr/\[warn\].*no reply within 1000 ms: \d+ command\(s\) failed with a timeout/,
    $mark)), 'paused: the log says the reply timed out');
ok($t->log_lines(qr/\[notice\].*throttle_redis: redis 127\.0\.0\.1:$port: connection restored/, $mark),
    'resumed: the recovery is logged at notice');

is(scalar($t->worker_pids), $workers, 'no worker died');
$t->log_unlike(qr/exited on signal/, 'no worker crashed');
$t->done;
