#!/usr/bin/perl
# Response cache stampedes: concurrent misses for one key send exactly one request upstream
# (the one that took the Redis fill lock); the others wait and are served what it stored —
# across the workers of one nginx (direct wake-up and pub/sub) and across two nginx instances
# on one Redis. A filler whose response is not storable releases the waiters at once (they go
# upstream themselves, not served its response); the wait is capped by
# throttle_cache_lock_timeout; with throttle_cache_stale, one request refreshes an expired
# entry while the others are served the old one, without waiting for the refresh (it is held
# at a paused app until they all are answered). What each request waited for is told by its
# X-Cache, the app's counts and the "waited ... going upstream" log lines, not by its time.

use strict;
use warnings;
use Test::More;
use POSIX ();
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 4)->need_fds(400);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

# timeout=1s: this file is about coalescing, not about Redis latency.
my $conf = $redis->fill(<<'EOF');
http {
    throttle_redis %%REDIS%% timeout=1s;
    throttle_cache_secret 0123456789abcdef-stampede;
    throttle_cache_user $cookie_sessionid;
    throttle_cache_valid 60s;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096;
        add_header X-Cache $throttle_cache_status always;
        add_header X-Worker $pid always;

        location /s/     { throttle_cache s; throttle_cache_lock_timeout 30s; proxy_pass http://%%APP%%; }
        location /cap/   { throttle_cache cap; throttle_cache_lock_timeout 500ms; proxy_pass http://%%APP%%; }
        location /stale/ { throttle_cache st; throttle_cache_valid 1s; throttle_cache_stale 30s;
                           proxy_pass http://%%APP%%; }
    }
}
EOF
$t->write_conf($conf)->run;

sub xc { $_[0]{headers}{'x-cache'} // '' }
sub nb { (Throttle::App::parse_body($_[0]{body}) // {})->{n} // -1 }
sub ck { (Throttle::App::parse_body($_[0]{body}) // {})->{cookie} // '' }
sub tally_of {
    my ($f, @r) = @_;
    my %n;
    $n{ $f->($_) }++ for @r;
    return join ', ', map { "$_ x $n{$_}" } sort keys %n;
}
sub statuses { tally_of(sub { "$_[0]{status}:" . xc($_[0]) }, @_) }
sub slowest { my $m = 0; $m = $_->{elapsed} > $m ? $_->{elapsed} : $m for @_; $m }
sub distinct { my %s; $s{$_}++ for @_; scalar keys %s }

# No request may take longer (client-measured): a hang, not load. Waiting for the lock timeout
# of /s/ (30 s) would be one; a request that hangs is cut by the client (60 s) with status 0.
my $hang = 20;

my $cookie = 'sessionid=stampede';

# --- 100 concurrent cold GETs for one key, one nginx with 4 workers
{
    my $path = '/s/one?_delay=500';
    my @r = $t->concurrent(100, sub { ['GET', $path, { Cookie => $cookie }] });
    is($app->count('/s/one'), 1, '100 cold GETs at once: exactly 1 reached the app');
    is(statuses(@r), '200:HIT x 99, 200:MISS x 1', 'one MISS, 99 HIT');
    my $n = $app->last_request('/s/one') ? $app->last_request('/s/one')->{n} : -2;
    is(scalar(grep { nb($_) == $n } @r), 100, "all 100 bodies are the app's one answer (n=$n)")
        or diag tally_of(sub { 'n=' . nb($_[0]) }, @r);
    is(scalar(grep { ck($_) eq $cookie } @r), 100, 'made for this user');
    my $workers = distinct(map { $_->{headers}{'x-worker'} // '' } @r);
    cmp_ok($workers, '>=', 2, "the requests were spread over $workers workers (cross-worker wake-up exercised)");
    my $hit = (grep { xc($_) eq 'HIT' } @r)[0];
    is($hit && $hit->{headers}{'x-app-n'}, $n, 'a waiter gets the stored headers (X-App-N)');
    note(sprintf 'slowest %.0f ms', 1000 * slowest(@r));
}

# --- two nginx instances on the same Redis: still exactly one upstream request
my $t2 = Throttle::Test->new(workers => 4);
$t2->app($app);
$t2->write_conf($conf)->run;
{
    my $path = '/s/two?_delay=500';
    my @r = $t->concurrent(100, sub {
        ['GET', $path, { Cookie => $cookie }, undef, port => ($_[0] % 2 ? $t2 : $t)->port];
    });
    my $count = $app->count('/s/two');
    is($count, 1, "100 cold GETs over 2 instances: exactly 1 reached the app (got $count)");
    is(statuses(@r), '200:HIT x 99, 200:MISS x 1', 'one MISS, 99 HIT across the two instances');
    my $n = $app->last_request('/s/two') ? $app->last_request('/s/two')->{n} : -2;
    is(scalar(grep { nb($_) == $n } @r), 100, "all 100 bodies are the one answer (n=$n)")
        or diag tally_of(sub { 'n=' . nb($_[0]) }, @r);
    my @other = grep { $_ % 2 } 0 .. 99;
    my $miss_at = (grep { xc($r[$_]) eq 'MISS' } 0 .. 99)[0] // -1;
    ok((grep { xc($r[$_]) eq 'HIT' } @other) >= 49, 'the instance without the filler served HITs (pub/sub wake-up)');
    note("the filler was on instance " . ($miss_at % 2 ? 2 : 1));
}

# --- the filler's response is not storable (Set-Cookie): the waiters are not given it, they go
# upstream themselves at once, not after throttle_cache_lock_timeout (30s: no "waited" line)
{
    my $path = '/s/nostore?_setcookie=a%3Db&_delay=500';
    my ($mark, $mark2) = ($t->log_mark, $t2->log_mark);
    my @r = $t->concurrent(20, sub {
        ['GET', $path, { Cookie => $cookie }, undef, port => ($_[0] % 4 == 3 ? $t2 : $t)->port];
    });
    is($app->count('/s/nostore'), 20, 'not storable: each of 20 requests went upstream');
    is(statuses(@r), '200:MISS x 20', 'all MISS');
    is(distinct(map { nb($_) } @r), 20, 'each got its own answer (20 distinct n)')
        or diag tally_of(sub { 'n=' . nb($_[0]) }, @r);
    is(scalar(grep { nb($_) == ($_->{headers}{'x-app-n'} // -3) && ck($_) eq $cookie } @r), 20,
        'each body matches its own X-App-N and cookie');
    is(scalar(grep { ($_->{headers}{'set-cookie'} // '') eq 'a=b' } @r), 20, 'each carries its own Set-Cookie');
    my @waited = ($t->log_lines(qr/waited \d+ ms for another request/, $mark),
                  $t2->log_lines(qr/waited \d+ ms for another request/, $mark2));
    is(scalar @waited, 0, 'nobody waited for the lock timeout (no "waited ... going upstream" line)')
        or diag join "\n", @waited;
    ok(slowest(@r) < $hang, sprintf('no hang: slowest %.2f s (filler 0.5 s + own upstream request 0.5 s; '
        . 'lock timeout 30 s)', slowest(@r)));
    my $again = $t->get($path, Cookie => $cookie);
    is(xc($again), 'MISS', 'nothing was stored');
}

# --- wait cap: the filler takes 3 s, throttle_cache_lock_timeout 500ms: the waiters go upstream
# when their wait times out (a "waited 500 ms" line each; MISS: not the filler's answer, which
# they would have been served had they waited for it), the filler still stores
{
    my $path = '/cap/x?_delay=3000';
    my $mark = $t->log_mark;
    my @r = $t->concurrent(10, sub { ['GET', $path, { Cookie => $cookie }] });
    my @q = sort { $a->{n} <=> $b->{n} } $app->requests('/cap/x');
    is(scalar @q, 10, 'wait cap: all 10 went upstream');
    is(statuses(@r), '200:MISS x 10', 'all MISS');
    my $filler = $q[0];
    my @late = sort { $a <=> $b } map { $_->{time} - $filler->{time} } @q[1 .. $#q];
    note(sprintf 'the waiters reached the app %.2f .. %.2f s after the filler (lock timeout 0.5 s)',
        $late[0] // -1, $late[-1] // -1);
    is(distinct(map { nb($_) } @r), 10, 'each got its own answer');
    my @waited = $t->log_lines(qr/waited 500 ms for another request to fill the entry/, $mark);
    is(scalar @waited, 9, '9 "waited 500 ms" info lines');
    my $h = $t->get($path, Cookie => $cookie);
    is(xc($h) . ' n=' . nb($h), "HIT n=$filler->{n}", "the filler's answer was stored (HIT, n=$filler->{n})");
    is($app->count('/cap/x'), 10, 'and served without the app');
}

# --- stale: valid 1s, stale 30s; after expiry, 50 at once: one refresh (EXPIRED), the others
# served the old entry (UPDATING) while the refresh is held at the paused app (the app is
# resumed once the access log shows 49 answers); then the new one is a HIT
{
    my $path = '/stale/x?_delay=500';
    my $first = $t->get($path, Cookie => $cookie);
    is(xc($first), 'MISS', 'stale: filled');
    my $old = nb($first);
    my $h = $t->get($path, Cookie => $cookie);
    is(xc($h) . ' n=' . nb($h), "HIT n=$old", 'stale: HIT while fresh');
    # HEAD never refreshes: it is answered STALE once the entry expired (polled).
    my $r;
    my $stale = Throttle::Redis::wait_for(sub {
        $r = $t->request('HEAD', $path, { Cookie => $cookie });
        xc($r) eq 'STALE';
    }, timeout => 10, step => 0.05);
    ok($stale, 'stale: expired after 1 s (HEAD answered STALE)') or diag xc($r);
    is($app->count('/stale/x'), 1, 'stale: HEADs never reached the app');

    # GETs of $path answered (access log) since now; with the app paused, only those served
    # without it can be.
    my $log = $t->testdir . '/access.log';
    my $from = -s $log;
    my $answered = sub {
        open my $fh, '<', $log or return 0;
        seek $fh, $from, 0;
        return scalar grep { index($_, "\"GET $path HTTP/1.1\" 200 ") >= 0 } <$fh>;
    };
    $app->pause;
    my $resumer = fork // die "fork: $!";
    if ($resumer == 0) {
        my $ok = Throttle::Redis::wait_for(sub { $answered->() >= 49 }, timeout => 30, step => 0.02);
        $app->resume;
        POSIX::_exit($ok ? 0 : 1);
    }
    my @r = $t->concurrent(50, sub { ['GET', $path, { Cookie => $cookie }] });
    waitpid $resumer, 0;
    ok($? == 0, 'stale: 49 answered while the refresh was held at the paused app');
    is($app->count('/stale/x'), 2, 'stale: 50 at once, exactly 1 refresh reached the app');
    is(statuses(@r), '200:EXPIRED x 1, 200:UPDATING x 49', 'one EXPIRED, 49 UPDATING');
    my ($exp) = grep { xc($_) eq 'EXPIRED' } @r;
    my $new = $exp ? nb($exp) : -2;
    ok($new > $old, "the refresh got a new body (n=$new)");
    is(scalar(grep { xc($_) eq 'UPDATING' && nb($_) == $old } @r), 49, "UPDATING ones got the old body (n=$old)");
    note(sprintf 'UPDATING: slowest %.0f ms', 1000 * slowest(grep { xc($_) eq 'UPDATING' } @r));
    # The refresh is stored by the worker that made it; poll (a GET before that is UPDATING).
    my $next;
    Throttle::Redis::wait_for(sub {
        $next = $t->get($path, Cookie => $cookie);
        xc($next) ne 'UPDATING';
    }, timeout => 10, step => 0.02);
    is(xc($next) . ' n=' . nb($next), "HIT n=$new", 'next request: HIT with the new body');
    is($app->count('/stale/x'), 2, 'stale: no further upstream request');
}

is(scalar($t->worker_pids), 4, 'instance 1: all workers alive');
is(scalar($t2->worker_pids), 4, 'instance 2: all workers alive');
$t->log_unlike(qr/exited on signal/, 'instance 1: no worker crashed');
$t2->log_unlike(qr/exited on signal/, 'instance 2: no worker crashed');
$t2->finish;
$t->done;
