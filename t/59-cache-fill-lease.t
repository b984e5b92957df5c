#!/usr/bin/perl
# The fill lock's lease. The lock a filler takes lives in Redis one lease (min(lock_timeout,
# 2 s)), holds the filler's owner token, and is renewed while the filler's upstream runs:
#   - kill -9 of the worker filling an entry: the requests waiting for it (on another nginx) and
#     the next request for that key are answered from one new fill, not each upstream on its
#     own after throttle_cache_lock_timeout (30 s here; nobody logs a lock-timeout wait), and
#     the entry is stored (the time after the kill is printed, not asserted: ~2 s, 30 s before);
#   - a slow but live filler (5 s upstream, 2 s lease) keeps its lock: the waiters are served its
#     answer, one upstream request in all;
#   - a request that comes after throttle_cache_lock_timeout into a live fill still finds the
#     lock (renewed) and is served the fill's answer instead of filling a second time.
# The upstream is made slow per request by the client's X-Delay header, which is not part of
# the cache key (proxy_pass forwards it as the app's _delay). Which worker fills is told by the
# X-Worker-Pid header nginx adds to the upstream request (the app records it).

use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time);
use IO::Select;
use IO::Socket::INET;
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 2);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

my $conf = $redis->fill(<<'EOF');
http {
    throttle_redis %%REDIS%% timeout=1s;
    throttle_cache_secret 0123456789abcdef-fill-lease;
    throttle_cache_user $cookie_sessionid;
    throttle_cache_valid 60s;

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Cache $throttle_cache_status always;
        add_header X-Worker $pid always;
        proxy_set_header X-Worker-Pid $pid;

        location /dead/ { throttle_cache d; throttle_cache_lock_timeout 30s;
                          proxy_pass http://%%APP%%$uri?_delay=$http_x_delay; }
        location /live/ { throttle_cache l; throttle_cache_lock_timeout 10s;
                          proxy_pass http://%%APP%%$uri?_delay=$http_x_delay; }
        location /late/ { throttle_cache t; throttle_cache_lock_timeout 3s;
                          proxy_pass http://%%APP%%$uri?_delay=$http_x_delay; }
    }
}
EOF
$t->allow(qr/worker process \d+ exited on signal 9/);
$t->write_conf($conf)->run;
# A second nginx on the same Redis: its requests wait for a fill on the first one (pub/sub), and
# survive the kill of the first one's worker.
my $t2 = Throttle::Test->new(workers => 2);
$t2->app($app);
$t2->write_conf($conf)->run;

my $cookie = 'sessionid=lease';
my $lease = 2;     # seconds: min(lock_timeout, 2 s) for /dead/ and /live/

sub xc { $_[0]{headers}{'x-cache'} // '' }
sub nb { (Throttle::App::parse_body($_[0]{body}) // {})->{n} // -1 }
sub statuses {
    my %n;
    $n{"$_->{status}:" . xc($_)}++ for @_;
    return join ', ', map { "$_ x $n{$_}" } sort keys %n;
}

# A request sent on its own connection, not read yet.
sub send_request {
    my ($port, $path, @headers) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 5)
        or die "connect: $!";
    my $req = "GET $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nCookie: $cookie\r\n";
    while (my ($k, $v) = splice @headers, 0, 2) { $req .= "$k: $v\r\n" }
    print $s "$req\r\n";
    return $s;
}

# Reads the responses on @socks until each connection closes (or $timeout s pass): each
# response with `done_at`, the time its connection closed.
sub read_responses {
    my ($timeout, @socks) = @_;
    my $sel = IO::Select->new(@socks);
    my %in = map { fileno($_) => '' } @socks;
    my %done;
    my $deadline = time + $timeout;
    while ($sel->count && time < $deadline) {
        for my $s ($sel->can_read(0.2)) {
            my $n = sysread $s, $in{ fileno $s }, 65536, length $in{ fileno $s };
            next if defined $n && $n > 0;
            $done{ fileno $s } = time;
            $sel->remove($s);
        }
    }
    return map {
        my $r = Throttle::Test::parse_response($in{ fileno $_ });
        $r->{status} = 0 unless $done{ fileno $_ };
        $r->{done_at} = $done{ fileno $_ } // time;
        close $_;
        $r;
    } @socks;
}

# The fill lock of the one entry filled under namespace $ns: [key, value, PTTL ms].
sub fill_lock {
    my ($ns) = @_;
    my @keys = grep { /:l$/ } $redis->keys("throttle:cache:{$ns:*:l");
    return undef unless @keys == 1;
    return [$keys[0], $redis->cli('GET', $keys[0]), $redis->cli('PTTL', $keys[0])];
}
sub waiter_marks { scalar grep { /:w$/ } $redis->keys("throttle:cache:{$_[0]:*:w") }

# --- kill -9 of the filler
{
    my $path = '/dead/x';
    my $mark = $t->log_mark;
    my $mark2 = $t2->log_mark;
    my $filler = send_request($t->port, $path, 'X-Delay' => 60000);
    ok($app->wait_for_count(1, $path), 'dead: the filler reached the app (it answers in 60 s)');
    my $fill = $app->last_request($path);
    my $pid = $fill ? $fill->{headers}{'x-worker-pid'} : 0;
    like($pid, qr/^\d+$/, "dead: the filler is worker $pid");

    my $lock = fill_lock('d');
    ok($lock, 'dead: the fill lock is in Redis');
    like($lock ? $lock->[1] : '', qr/^[0-9a-f]{16}\.\Q$pid\E\.\d+$/,
        "dead: the lock's value is the filler's owner token (" . ($lock ? $lock->[1] : '-') . ')');
    ok($lock && $lock->[2] > 0 && $lock->[2] <= 1000 * $lease,
        "dead: its TTL is a lease, not throttle_cache_lock_timeout (PTTL " . ($lock ? $lock->[2] : '-') . ')');

    # Three requests on the second nginx wait for that fill (they left their waiter mark).
    my @waiters = map { send_request($t2->port, $path) } 1 .. 3;
    ok(Throttle::Redis::wait_for(sub { waiter_marks('d') }, timeout => 10),
        'dead: requests on the second nginx wait for the fill (waiter mark)');

    ok(kill('KILL', $pid), "dead: kill -9 $pid");
    my $killed_at = time;
    close $filler;
    my $next = $t->request('GET', $path, { Cookie => $cookie }, undef, timeout => 45);
    my $next_after = time - $killed_at;
    my @w = read_responses(45, @waiters);

    is($next->{status}, 200, 'dead: the next request for the key is answered 200');
    note(sprintf('dead: the next request answered %.1f s after the kill (lock timeout 30 s, lease 2 s)',
        $next_after));
    is(scalar(grep { $_->{status} == 200 } @w), 3, 'dead: the 3 waiters on the second nginx are answered 200');
    my $slowest = 0;
    $slowest < $_->{done_at} - $killed_at and $slowest = $_->{done_at} - $killed_at for @w;
    note(sprintf('dead: the waiters answered at most %.1f s after the kill', $slowest));
    note('dead: ' . statuses($next, @w));
    is($app->count($path), 2, 'dead: one new fill in all (the dead one, then one for 4 requests)');
    my $n = $app->last_request($path) ? $app->last_request($path)->{n} : -2;
    is(scalar(grep { nb($_) == $n } $next, @w), 4, "dead: all 4 got the new fill's answer (n=$n)");
    my $h = $t->get($path, Cookie => $cookie);
    is(xc($h) . ' n=' . nb($h), "HIT n=$n", 'dead: and it was stored');
    my @waited = ($t->log_lines(qr/waited \d+ ms for another request/, $mark),
                  $t2->log_lines(qr/waited \d+ ms for another request/, $mark2));
    is(scalar @waited, 0, 'dead: nobody waited for the lock timeout') or diag join "\n", @waited;
    my @died = $t->log_lines(qr/exited on signal/, $mark);
    is(scalar @died, 1, 'dead: the killed worker is the only one that died') or diag join "\n", @died;
    ok(Throttle::Redis::wait_for(sub { scalar($t->worker_pids) == 2 }, timeout => 10),
        'dead: nginx started a new worker');
}

# --- a slow but live filler keeps its lock: 5 s upstream, 2 s lease, waiters on both nginx
{
    my $path = '/live/x';
    my $filler = send_request($t->port, $path, 'X-Delay' => 5000);
    ok($app->wait_for_count(1, $path), 'live: the filler reached the app (it answers in 5 s)');
    my $started = time;
    my $first = fill_lock('l');
    my @waiters = map { send_request(($_ % 2 ? $t : $t2)->port, $path) } 1 .. 6;
    # Past the first lease the lock is still the filler's, with a lease's TTL: renewed.
    Throttle::Redis::wait_for(sub { time - $started > $lease + 0.5 }, timeout => 10);
    my $later = fill_lock('l');
    ok($first && $later && $later->[1] eq $first->[1] && $later->[2] > 0 && $later->[2] <= 1000 * $lease,
        sprintf('live: %.1f s into the fill the lock is still the filler\'s, renewed (PTTL %s)',
            time - $started, $later ? $later->[2] : '-'));
    my ($f, @w) = read_responses(30, $filler, @waiters);
    is(statuses($f), '200:MISS x 1', 'live: the filler: MISS');
    is(statuses(@w), '200:HIT x 6', 'live: the 6 waiters: HIT');
    is($app->count($path), 1, 'live: one upstream request in all');
    is(scalar(grep { nb($_) == nb($f) } @w), 6, 'live: the waiters got the filler\'s answer (n=' . nb($f) . ')');
    ok(!fill_lock('l'), 'live: the lock is gone after the store');
}

# --- a request later than throttle_cache_lock_timeout (3 s) into a live 4.5 s fill: the lock was
# renewed, so it waits for the rest of the fill and is served its answer; with a lock that lived
# lock_timeout it would have taken the lock and filled a second time.
{
    my $path = '/late/x';
    my $filler = send_request($t->port, $path, 'X-Delay' => 4500);
    ok($app->wait_for_count(1, $path), 'late: the filler reached the app (it answers in 4.5 s)');
    my $started = time;
    Throttle::Redis::wait_for(sub { time - $started > 3.5 }, timeout => 10);
    ok(fill_lock('t'), sprintf('late: %.1f s into the fill the lock is still there', time - $started));
    my $late = $t2->get($path, Cookie => $cookie);
    my ($f) = read_responses(30, $filler);
    is(statuses($f), '200:MISS x 1', 'late: the filler: MISS');
    is(xc($late) . ' n=' . nb($late), 'HIT n=' . nb($f), "late: the late request: HIT with the filler's answer");
    is($app->count($path), 1, 'late: one upstream request in all');
}

is(scalar($t2->worker_pids), 2, 'second nginx: both workers alive');
$t2->log_unlike(qr/exited on signal/, 'second nginx: no worker crashed');
$t2->finish;
$t->done;
