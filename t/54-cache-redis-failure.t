#!/usr/bin/perl
# The response cache when Redis fails: killed, or paused (SIGSTOP: a hang). Every GET is then
# answered by the upstream (counted by the app, its own body), X-Cache ERROR or BYPASS, never a
# 5xx, and none hangs; writes still answer 2xx from the upstream; purge answers 503. Caching
# resumes once Redis answers again (restarted empty, or resumed), and the fill locks the
# timed-out lookups took hold nobody up. Clients that hang up while their lookups wait for a
# paused Redis leave nginx healthy.

use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time);
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $workers = 2;
my $t = Throttle::Test->new(workers => $workers)->need_fds(400);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

my $timeout = 0.050;    # throttle_redis timeout=50ms
# No request may take longer (client-measured): a hang, not load (the slowest time is printed
# next to the Redis timeout). Half the client's timeout, after which a request that hangs is
# cut (status 0): 10 s for one request, 60 s for concurrent ones (they also wait for the
# forking app: seconds on a loaded machine).
my %hang = (one => 5, concurrent => 30);

$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_redis %%REDIS%% timeout=50ms connect_timeout=100ms;
    throttle_cache_secret 0123456789abcdef-redis-failure;
    throttle_cache_user $cookie_sessionid;
    throttle_cache_valid 60s;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096;
        add_header X-Cache $throttle_cache_status always;
        location /c/    { throttle_cache c; proxy_pass http://%%APP%%; }
        location /w/    { throttle_cache_invalidate c; proxy_pass http://%%APP%%; }
        location /purge { throttle_cache_purge $arg_ns; }
    }
}
EOF

my $cookie = 'sessionid=rf';
sub xc { $_[0]{headers}{'x-cache'} // '' }
sub body { Throttle::App::parse_body($_[0]{body}) // { n => -1, cookie => '', method => '' } }
sub slowest { my $m = 0; $m = $_->{elapsed} > $m ? $_->{elapsed} : $m for @_; $m }
sub no_hang {
    my ($what, $kind, @r) = @_;
    ok(slowest(@r) < $hang{$kind}, sprintf('%s: no hang (slowest %.1f ms; Redis timeout %.0f ms)',
        $what, 1000 * slowest(@r), 1000 * $timeout));
}
sub tally_of {
    my ($f, @r) = @_;
    my %n;
    $n{ $f->($_) }++ for @r;
    return join ', ', map { "$_ x $n{$_}" } sort keys %n;
}
sub statuses { tally_of(sub { "$_[0]{status}:" . xc($_[0]) }, @_) }

# Each response is the app's own fresh answer for this request: 200, X-Cache ERROR or BYPASS,
# its body's n is its X-App-N and the user's cookie reached the app.
sub upstream_answers {
    my (@r) = @_;
    return scalar grep {
        $_->{status} == 200 && xc($_) =~ /^(?:ERROR|BYPASS)$/
            && body($_)->{n} == ($_->{headers}{'x-app-n'} // -2) && body($_)->{cookie} eq $cookie
    } @r;
}

# Polls one path until it is cached again: returns "MISS n=.. HIT n=.." seen last.
sub caching_resumes {
    my ($tt, $path) = @_;
    my ($prev, $last) = ({}, {});
    Throttle::Redis::wait_for(sub {
        $prev = $last;
        $last = $tt->get($path, Cookie => $cookie);
        xc($last) eq 'HIT';
    }, timeout => 15, step => 0.05);
    return sprintf '%s n=%d, %s n=%d', xc($prev) || '-', body($prev)->{n}, xc($last) || '-', body($last)->{n};
}

# --- warm
{
    my $r = $t->get('/c/warm', Cookie => $cookie);
    is(xc($r), 'MISS', 'Redis up: MISS');
    my $h = $t->get('/c/warm', Cookie => $cookie);
    is(xc($h) . ' n=' . body($h)->{n}, 'HIT n=' . body($r)->{n}, 'Redis up: HIT');
}

# --- Redis killed
$redis->kill;
{
    my $before = $app->count;
    my @seq = map { $t->get($_ % 3 ? "/c/k$_" : '/c/warm', Cookie => $cookie) } 1 .. 30;
    is($app->count - $before, 30, 'killed: 30 sequential GETs, all 30 reached the app (incl. the one cached before)');
    is(upstream_answers(@seq), 30, 'killed: each answered 200 by the app itself (own n, own cookie), ERROR or BYPASS')
        or diag statuses(@seq);
    no_hang('killed: 30 sequential GETs', one => @seq);
    note('killed: ' . statuses(@seq));

    $before = $app->count;
    my @r = $t->concurrent(50, sub { ['GET', "/c/x$_[0]", { Cookie => $cookie }] });
    is($app->count - $before, 50, 'killed: 50 concurrent GETs all reached the app');
    is(upstream_answers(@r), 50, 'killed: all 200 from the app, ERROR or BYPASS') or diag statuses(@r);
    no_hang('killed: 50 concurrent GETs', concurrent => @r);

    my $w = $t->request('POST', '/w/x', { Cookie => $cookie }, 'a=1');
    is($w->{status} . ' ' . body($w)->{method}, '200 POST', 'killed: an invalidating POST is answered 200 by the app');
    $w = $t->request('POST', '/c/warm', { Cookie => $cookie }, 'a=1');
    is($w->{status} . ' ' . body($w)->{method}, '200 POST', 'killed: a POST in the cached location: 200 from the app');
    $w = $t->request('DELETE', '/w/x?_status=204', { Cookie => $cookie });
    is($w->{status}, 204, 'killed: DELETE answered 204 by the app');
    no_hang('killed: the write', one => $w);

    my $p = $t->request('POST', '/purge?ns=c');
    is($p->{status}, 503, 'killed: purge answers 503');
    like($p->{body}, qr/^\{"error":"redis [^"]*","namespace":"c"\}/, 'killed: purge says why, as JSON');
    no_hang('killed: purge', one => $p);
}

# --- Redis restarted (same port, empty): caching resumes
$redis->restart;
is(caching_resumes($t, '/c/after-restart'), sprintf('MISS n=%d, HIT n=%d', ($app->seq) x 2),
    'restarted: caching resumes (MISS, then HIT with that body)');
{
    my $p = $t->request('POST', '/purge?ns=c');
    is($p->{status}, 200, 'restarted: purge works again') or diag $p->{body};
}

# --- Redis paused (SIGSTOP)
my @timed_out;    # paths whose lookup timed out (ERROR)
$redis->pause;
{
    my $mark = $t->log_mark;
    my $before = $app->count;
    my @seq = map { $t->get("/c/p$_", Cookie => $cookie) } 1 .. 40;
    is($app->count - $before, 40, 'paused: 40 sequential GETs, all reached the app');
    is(upstream_answers(@seq), 40, 'paused: each 200 from the app, ERROR or BYPASS') or diag statuses(@seq);
    no_hang('paused: 40 sequential GETs', one => @seq);
    note('paused: ' . statuses(@seq) . ' (ERROR: failed or timed out, BYPASS: circuit open)');
    @timed_out = map { "/c/p$_" } grep { xc($seq[$_ - 1]) eq 'ERROR' } 1 .. 40;

    my @r = $t->concurrent(50, sub { ['GET', "/c/q$_[0]", { Cookie => $cookie }] });
    is(upstream_answers(@r), 50, 'paused: 50 concurrent GETs, all 200 from the app') or diag statuses(@r);
    no_hang('paused: 50 concurrent GETs', concurrent => @r);

    my $w = $t->request('POST', '/w/x', { Cookie => $cookie }, 'a=1');
    is($w->{status} . ' ' . body($w)->{method}, '200 POST', 'paused: an invalidating POST is answered 200');
    no_hang('paused: the write', one => $w);
    my $p = $t->request('POST', '/purge?ns=c');
    is($p->{status}, 503, 'paused: purge answers 503');
    no_hang('paused: purge', one => $p);
}
$redis->resume;
is(caching_resumes($t, '/c/after-resume'), sprintf('MISS n=%d, HIT n=%d', ($app->seq) x 2),
    'resumed: caching resumes (MISS, then HIT)');

# Redis ran the timed-out lookups when it resumed, and they took fill locks (TTL 5s, the
# default lock timeout) nobody will fill: a later request for such a key must not wait for them.
# Held up, it would wait the lock timeout and log "waited 5000 ms for another request to fill
# the entry, going upstream" before going upstream.
SKIP: {
    skip 'no lookup timed out while Redis was paused', 2 unless @timed_out;
    my $mark = $t->log_mark;
    my $r = $t->get($timed_out[0], Cookie => $cookie);
    is($r->{status} . ' ' . body($r)->{n}, "200 " . ($r->{headers}{'x-app-n'} // -1),
        "after resume, GET $timed_out[0] (its lookup timed out during the pause): 200 from the app");
    my @waited = $t->log_lines(qr/waited \d+ ms for another request/, $mark);
    is(scalar @waited, 0, sprintf('it was not held up by the fill lock the timed-out lookup took '
        . '(no "waited" line; %.0f ms, %s)', 1000 * $r->{elapsed}, xc($r)))
        or diag join "\n", @waited;
}

is(scalar($t->worker_pids), $workers, 'no worker died');
$t->log_unlike(qr/exited on signal/, 'no worker crashed');

# --- 40 clients hang up while their lookups wait for a paused Redis. A second instance with
# timeout=30s, so that the lookups are still waiting when the clients go (however slow the
# machine) and Redis answers them after that; 20 of them ask for one key (the first one's
# lookup takes its fill lock). throttle_cache_lock_timeout 30s: a lock left behind outlives
# every wait below, and a request held up by one would hang.
my $t2 = Throttle::Test->new(workers => $workers);
$t2->app($app);
$t2->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_redis %%REDIS%% timeout=30s;
    throttle_cache_secret 0123456789abcdef-redis-failure;
    throttle_cache_user $cookie_sessionid;
    throttle_cache_valid 60s;
    throttle_cache_lock_timeout 30s;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096;
        add_header X-Cache $throttle_cache_status always;
        location /c/ { throttle_cache c2; proxy_pass http://%%APP%%; }
        location = /status { stub_status; }
    }
}
EOF
{
    is(caching_resumes($t2, '/c/t2-warm'), sprintf('MISS n=%d, HIT n=%d', ($app->seq) x 2), 'instance 2 caches');
    my @pids = sort $t2->worker_pids;
    my $gone = sub { $app->count(qr{^/c/(?:same|gone)}) };
    my $mark = $t2->log_mark;

    $redis->pause;
    my @socks;
    for my $i (1 .. 40) {
        my $path = $i <= 20 ? '/c/same' : "/c/gone$i";
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t2->port, Timeout => 2)
            or die "connect: $!";
        print $s "GET $path HTTP/1.1\r\nHost: x\r\nCookie: $cookie\r\nConnection: close\r\n\r\n";
        push @socks, $s;
    }
    # stub_status counts them as "Writing" (plus the status request itself)
    my $writing = 0;
    my $waiting = Throttle::Redis::wait_for(sub {
        ($writing) = ($t2->get('/status')->{body} // '') =~ /Writing: (\d+)/;
        return ($writing // 0) >= 41;
    }, timeout => 10, step => 0.02);
    ok($waiting, "40 lookups wait for the paused Redis (Writing: $writing)");
    close $_ for @socks;
    $redis->resume;

    is(caching_resumes($t2, '/c/t2-after'), sprintf('MISS n=%d, HIT n=%d', ($app->seq) x 2),
        'after the late replies to gone requests, instance 2 caches again');
    is($gone->(), 0, 'none of the 40 abandoned requests reached the app');
    # Their lookups took fill locks (one per key: 21) when Redis ran them, after the clients
    # had gone; nobody will fill those entries, so the locks should go at once (polled for
    # 10 s; their TTL is 30 s, so only a release passes).
    my @locks;
    Throttle::Redis::wait_for(sub { !(@locks = $redis->keys('throttle:cache:{c2:*:l')) },
        timeout => 10, step => 0.05);
    is(scalar @locks, 0, 'no fill lock is left behind by the abandoned lookups')
        or diag scalar(@locks) . ' fill locks left, e.g. ' . $locks[0] . ' PTTL '
            . $redis->cli('PTTL', $locks[0]);

    # The key whose fill lock an abandoned lookup took: a later request must not wait for a
    # fill nobody makes (throttle_cache_lock_timeout 30s: held up, it would hang).
    my $r = $t2->get('/c/same', Cookie => $cookie);
    is($r->{status} . ' ' . body($r)->{cookie}, "200 $cookie", 'a later GET of the same key: 200 from the app');
    # Held up by the lock, it would wait throttle_cache_lock_timeout and say so in the log.
    is(scalar($t2->log_lines(qr/waited \d+ ms for another request/, $mark)), 0,
        'it was not held up by the abandoned lookup\'s fill lock (no wait logged)');
    note(sprintf 'that GET took %.0f ms (%s)', 1000 * $r->{elapsed}, xc($r));
    my $h;
    Throttle::Redis::wait_for(sub { $h = $t2->get('/c/same', Cookie => $cookie); xc($h) eq 'HIT' },
        timeout => 10, step => 0.05);
    my $last = $app->last_request('/c/same');
    is(xc($h) . ' n=' . body($h)->{n}, 'HIT n=' . ($last ? $last->{n} : -1),
        'and that key is cached again (HIT with the last answer the app gave for it)');

    is_deeply([sort $t2->worker_pids], \@pids, 'instance 2: the same worker processes');
    $t2->log_unlike(qr/exited on signal|signal 11/, 'instance 2: no worker crashed');
}

$t2->finish;
$t->done;
