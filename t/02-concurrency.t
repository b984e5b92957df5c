#!/usr/bin/perl
# Four workers share one zone exactly: of many requests sent at once for one key, exactly
# the quota passes, whichever worker takes each one.

use strict;
use warnings;
use Test::More;
use Throttle::Test;

my $t = Throttle::Test->new(workers => 4)->need_fds(1100)->write_conf(<<'EOF')->run;
http {
    throttle_zone $binary_remote_addr zone=sliding:1m rate=100r/h;
    throttle_zone $binary_remote_addr zone=gcra:1m    rate=100r/h algorithm=gcra;
    throttle_zone $http_x_key         zone=keys:1m    rate=10r/m;
    throttle_zone $binary_remote_addr zone=x:1m       rate=50r/h;
    throttle_zone $binary_remote_addr zone=y:1m       rate=20r/h;
    log_format pids "$pid $status";

    server {
        # reuseport: each worker has its own socket and the kernel spreads connections
        # over them, so the requests are sure to be handled by several workers at once.
        listen 127.0.0.1:%%PORT%% backlog=4096 reuseport;
        location /sliding/ { throttle zone=sliding; root %%TESTDIR%%; access_log %%TESTDIR%%/pids.log pids; }
        location /gcra/    { throttle zone=gcra; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /keys/    { throttle zone=keys; root %%TESTDIR%%; }
        location /xy/      { throttle zone=x; throttle zone=y; root %%TESTDIR%%; }
        location /x/       { throttle zone=x; root %%TESTDIR%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
$t->write_file("$_/f", "ok\n") for qw(sliding gcra keys xy x);

is(scalar(my @w = $t->worker_pids), 4, 'four worker processes');

# --- 500 at once, sliding window, 100r/h
my @r = $t->concurrent(500, sub { ['GET', '/sliding/f'] });
my $n = $t->tally(@r);
is($n->{200} // 0, 100, 'sliding: exactly 100 of 500 concurrent requests pass');
is($n->{429} // 0, 400, 'sliding: exactly 400 rejected with 429');
is(scalar(grep { $_->{status} == 429 && ($_->{headers}{'retry-after'} // '') =~ /^[1-9]\d*$/ } @r),
    $n->{429} // 0, 'sliding: every 429 has Retry-After');
my @rem = sort { $a <=> $b } map { ($_->{headers}{ratelimit} // '') =~ /;r=(\d+);/ ? $1 : -1 }
    grep { $_->{status} == 200 } @r;
is_deeply(\@rem, [0 .. 99], 'sliding: each pass saw a distinct remaining count, 99 down to 0');
is($t->get('/sliding/f')->{status}, 429, 'sliding: the next request is rejected');
my %by_pid;
$by_pid{$_}++ for $t->read_file("pids.log") =~ /^(\d+) 200$/mg;
ok(keys %by_pid >= 2, 'sliding: passes came from several workers (' . join(', ', values %by_pid) . ')');

# --- 1000 at once, GCRA, 100r/h (default burst = 100)
@r = $t->concurrent(1000, sub { ['GET', '/gcra/x'] });
$n = $t->tally(@r);
is($n->{200} // 0, 100, 'gcra: exactly 100 of 1000 concurrent requests pass');
is($n->{429} // 0, 900, 'gcra: exactly 900 rejected with 429');
is($t->get('/gcra/x')->{status}, 429, 'gcra: the next request is rejected');

# --- many keys at once: 50 keys x 12 requests, 10r/m each
@r = $t->concurrent(600, sub { ['GET', '/keys/f', { 'X-Key' => 'key' . ($_[0] % 50) }] });
my %pass;
$pass{ $_ % 50 } += $r[$_]{status} == 200 for 0 .. $#r;
is(scalar(grep { $pass{$_} == 10 } keys %pass), 50, 'keys: exactly 10 pass for each of 50 keys');
is($t->tally(@r)->{429} // 0, 100, 'keys: 100 rejected');

# --- two zones at once: requests rejected by y consume nothing in x, even when racing
@r = $t->concurrent(300, sub { ['GET', '/xy/f'] });
is($t->tally(@r)->{200} // 0, 20, 'x+y: exactly 20 of 300 concurrent requests pass (y is 20r/h)');
@r = $t->concurrent(100, sub { ['GET', '/x/f'] });
is($t->tally(@r)->{200} // 0, 30, 'x alone: exactly 30 more pass (x counted only the 20)');

$t->done;
