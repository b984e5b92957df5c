#!/usr/bin/perl
# nginx -s reload under load drops no request, whatever it waits for: a background client keeps
# requests in flight on a local zone, a strict zone, a sync zone and a cached location (the
# response cache, with fills and waiters) while the master is sent SIGHUP 20 times, each reload
# waited for until every old worker has exited. Every request gets a complete response (200, or
# 429 from the limits), none is cut (empty reply, reset), and no worker logs "open socket ...
# left in connection" (the teardown fails on any [alert]).
#
# Before each odd reload Redis is paused for a moment (CLIENT PAUSE, shorter than the module's
# timeout): the requests waiting on it when their worker is told to exit are many, not a
# handful, and each must still be answered by Redis once it resumes -- the worker stays until
# they are.

use strict;
use warnings;
use Test::More;
use POSIX ();
use Time::HiRes qw(time sleep);
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 4)->need_fds(400);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

my $conf = $redis->fill(<<'EOF');
http {
    throttle_redis %%REDIS%% timeout=3s;
    throttle_zone $http_x_key zone=loc:1m    rate=30r/s;
    throttle_zone $http_x_key zone=strict:1m rate=30r/s mode=strict;
    throttle_zone $http_x_key zone=sync:1m   rate=30r/s mode=sync sync=100ms;
    throttle_cache_secret 0123456789abcdef-reload-under-load;
    throttle_cache_user $cookie_sessionid;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096;
        add_header X-Gen GEN always;
        location /l/ { throttle zone=loc;    proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /s/ { throttle zone=strict; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /y/ { throttle zone=sync;   proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /c/ { throttle_cache c; throttle_cache_lock_timeout 5s; proxy_pass http://%%APP%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
sub gen { my ($n) = @_; $conf =~ s/GEN/$n/r }
$t->write_conf(gen(0))->run;

my @paths = ('/l/', '/s/', '/y/', '/c/');
my $batch = 24;

# The background client: batches of $batch requests at once, every location in each batch,
# until told to stop; one line per response in $results.
my $results = $t->testdir . '/results';
my $stop = $t->testdir . '/stop';
my $client = fork // die "fork: $!\n";
if ($client == 0) {
    open my $out, '>', $results or POSIX::_exit(1);
    $out->autoflush(1);
    my $round = 0;
    while (!-e $stop) {
        $round++;
        my @r = $t->concurrent($batch, sub {
            my $i = shift;
            my $path = $paths[$i % @paths];
            my $key = 'k' . ($i % 3);
            return ['GET', "${path}x$round", { 'X-Key' => $key }] if $path ne '/c/';
            # 6 cache keys for 3 users: hits, misses and waiters for a fill; 1 s entries.
            return ['GET', '/c/e' . ($round % 2) . "?_cc=max-age%3D1&_delay=20",
                    { Cookie => 'sessionid=u' . ($i % 3) }];
        }, timeout => 60);
        for my $i (0 .. $#r) {
            my $x = $r[$i];
            my $what = $x->{error} // (($x->{headers}{'content-length'} // -1) == length $x->{body}
                ? 'complete' : 'no content-length');
            $what =~ s/\s+/_/g;
            print $out join(' ', $paths[$i % @paths], $x->{status}, $what,
                $x->{headers}{'x-gen'} // '-'), "\n";
        }
    }
    POSIX::_exit(0);
}

sub answered { my @l = -e $results ? split /\n/, $t->read_file('results') : (); scalar @l }

# Wait for the client to be under way, then reload 20 times while it runs.
Throttle::Redis::wait_for(sub { answered() >= 2 * $batch }, timeout => 30);
my $reloads = 0;
for my $i (1 .. 20) {
    my $before = answered();
    $redis->cli('CLIENT', 'PAUSE', 300, 'ALL') if $i % 2;
    $reloads += $t->write_conf(gen($i))->reload(timeout => 60);
    # Let the new generation serve at least one batch before the next reload.
    Throttle::Redis::wait_for(sub { answered() >= $before + $batch }, timeout => 30);
}
is($reloads, 20, '20 reloads, each finished (every old worker exited)');

open my $fh, '>', $stop or die "$stop: $!\n";
close $fh;
waitpid $client, 0;
is($?, 0, 'the client ran to the end');

my (%by, @bad);
my %gens;
for my $line (split /\n/, $t->read_file('results')) {
    my ($path, $status, $what, $gen) = split / /, $line;
    $by{$path}{total}++;
    $gens{$gen}++;
    if (($status == 200 || $status == 429) && $what eq 'complete') {
        $by{$path}{ok}++;
    } else {
        push @bad, $line;
    }
}
my $total = 0;
$total += $by{$_}{total} // 0 for @paths;
diag(sprintf '%d requests during 20 reloads (%s), answered by %d configuration generations',
    $total, join(', ', map { "$_ " . ($by{$_}{total} // 0) } @paths), scalar keys %gens);
ok($total >= 20 * $batch, 'the client kept requests in flight through the reloads');
for my $p (@paths) {
    is($by{$p}{ok} // 0, $by{$p}{total} // 0, "$p: every request got a complete 200 or 429");
}
is(scalar @bad, 0, 'no request failed') or diag(join "\n", @bad[0 .. ($#bad < 19 ? $#bad : 19)]);
is(scalar($t->log_lines(qr/open socket .* left in connection/)), 0,
    'no worker left a socket open at exit');

$t->done;
