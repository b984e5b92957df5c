#!/usr/bin/perl
# The response cache's counters (issue 11) as throttle_metrics shows them, per namespace, with
# a real Redis, the test application and nginx with 2 workers (the counts are the sums of both):
# lookups by $throttle_cache_status (MISS then HIT, HEAD and conditional requests, BYPASS for
# credentials without an identity and for a hit over throttle_cache_inflate_memory, HIT and
# STALE HEADs of an expired entry, its EXPIRED refresh and an UPDATING answer meanwhile, an
# ERROR while Redis hangs; an internal redirect counted once, under the namespace that looked
# up; the access log's $throttle_cache_status values are the counts), stores and stored bytes
# (equal to the bytes of the entries in Redis), refusals (uncacheable: Set-Cookie, no-store, a status not configured; too_large: by
# Content-Length and while a chunked body arrives; generation_moved: a write of the filling
# user confirmed during the fill), invalidations (per namespace and confirmed write, from the
# location, throttle_cache_invalidate and the upstream's header; anonymous and failed writes
# count nothing), purges (a namespace no directive names has no counters), fill waits (woken:
# waiters served the filler's answer; timed_out: throttle_cache_lock_timeout). Every count is
# exact, in the Prometheus text and in the JSON, which agree. Where a count depends on an
# answer from Redis that may come after the client's response (STORE), the test polls the
# metrics for it; which requests wait for a fill is made certain by a paused application, never
# by timing.

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use POSIX ();
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 2)->need_fds(200);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_redis %%REDIS%% timeout=1s;
    throttle_cache_secret 0123456789abcdef-metrics-cache;
    throttle_cache_user $cookie_sessionid;
    throttle_cache_valid 60s;
    proxy_http_version 1.1;
    throttle_cache_inflate_memory 1k;
    log_format cs '$throttle_cache_status $request_uri';
    access_log %%TESTDIR%%/cache.log cs;

    server {
        listen 127.0.0.1:%%PORT%% backlog=1024;
        add_header X-Cache $throttle_cache_status always;

        location /hm/   { throttle_cache hm; proxy_pass http://%%APP%%; }
        location /big/  { throttle_cache big; throttle_cache_max_size 1k; proxy_pass http://%%APP%%; }
        location /unc/  { throttle_cache unc; proxy_pass http://%%APP%%; }
        location /inv/  { throttle_cache inv; proxy_pass http://%%APP%%; }
        location /w/    { throttle_cache_invalidate inv other; proxy_pass http://%%APP%%; }
        location /hdr/  { proxy_pass http://%%APP%%; }
        location /st/   { throttle_cache st; throttle_cache_lock_timeout 30s; proxy_pass http://%%APP%%; }
        location /cap/  { throttle_cache cap; throttle_cache_lock_timeout 300ms; proxy_pass http://%%APP%%; }
        location /gm/   { throttle_cache gm; proxy_pass http://%%APP%%; }
        location /gmw/  { throttle_cache_invalidate gm; return 204; }
        location /by/   { throttle_cache by; proxy_pass http://%%APP%%; }
        location /rd/   { throttle_cache rd; proxy_pass http://%%APP%%; proxy_intercept_errors on;
                          error_page 404 = /hm/fallback; }
        location /inf/  { throttle_cache inf; proxy_pass http://%%APP%%; }
        location /sv/   { throttle_cache sv; throttle_cache_valid 1s; throttle_cache_stale 60s;
                          proxy_pass http://%%APP%%; }
        location /err/  { throttle_cache err; proxy_pass http://%%APP%%; }
        location /off/  { throttle_cache off; proxy_pass http://%%APP%%; }
        location /purge { throttle_cache_purge $arg_ns; }

        location = /metrics      { throttle_metrics; }
        location = /metrics.json { throttle_metrics format=json; }
    }
}
EOF

my $A = 'sessionid=alice';
sub xc { $_[0]{headers}{'x-cache'} // '' }

my @statuses = qw(HIT MISS EXPIRED STALE UPDATING BYPASS ERROR);
my @reasons = qw(uncacheable too_large generation_moved);
my @outcomes = qw(woken timed_out);
my @namespaces = qw(hm big unc inv other st cap gm by sv inf rd err);

# The cache counters of the Prometheus text: { "ns/what" => n }, what one of
# lookups:STATUS, refusals:REASON, fill_waits:OUTCOME, stores, stored_bytes, invalidations,
# purges. Dies on a cache sample it does not know.
my %family = (
    nginx_throttle_cache_lookups_total => ['lookups', 'status'],
    nginx_throttle_cache_store_refusals_total => ['refusals', 'reason'],
    nginx_throttle_cache_fill_waits_total => ['fill_waits', 'outcome'],
    nginx_throttle_cache_stores_total => ['stores'],
    nginx_throttle_cache_stored_bytes_total => ['stored_bytes'],
    nginx_throttle_cache_invalidations_total => ['invalidations'],
    nginx_throttle_cache_purges_total => ['purges'],
    nginx_throttle_cache_local_hits_total => ['local_hits'],
    nginx_throttle_cache_local_stores_total => ['local_stores'],
    nginx_throttle_cache_local_evictions_total => ['local_evictions'],
    nginx_throttle_cache_local_untrusted_total => ['local_untrusted'],
);

sub prometheus {
    my $r = $t->get('/metrics');
    die "GET /metrics: $r->{status}\n" unless $r->{status} == 200;
    my (%v, %types);
    for my $line (split /\n/, $r->{body}) {
        if ($line =~ /^# TYPE (nginx_throttle_cache_\w+) (\w+)$/) {
            $types{$1} = $2;
            next;
        }
        next if $line =~ /^#/ || $line !~ /^nginx_throttle_cache_/;
        my ($name, $labels, $value) = $line =~ /^(\w+)\{([^}]*)\} (\d+)$/
            or die "unparsed sample: $line\n";
        my %l = $labels =~ /(\w+)="([^"]*)"/g;
        my $f = $family{$name} or die "unknown cache family: $line\n";
        my $key = "$l{namespace}/$f->[0]" . (defined $f->[1] ? ":$l{$f->[1]}" : '');
        die "sample twice: $line\n" if exists $v{$key};
        $v{$key} = $value;
    }
    for my $name (keys %family) {
        die "family $name is typed " . ($types{$name} // 'nothing') . "\n"
            unless ($types{$name} // '') eq 'counter';
    }
    return \%v;
}

# The same from the JSON.
sub json {
    my $r = $t->get('/metrics.json');
    die "GET /metrics.json: $r->{status}\n" unless $r->{status} == 200;
    my $doc = JSON::PP::decode_json($r->{body});
    my %v;
    for my $ns (keys %{ $doc->{cache} // {} }) {
        my $c = $doc->{cache}{$ns};
        for my $k (keys %$c) {
            my %map = (lookups => 'lookups', store_refusals => 'refusals', fill_waits => 'fill_waits');
            if (ref $c->{$k} eq 'HASH') {
                my $what = $map{$k} // die "unknown JSON cache object $k\n";
                $v{"$ns/$what:$_"} = $c->{$k}{$_} for keys %{ $c->{$k} };
            } else {
                $v{"$ns/$k"} = $c->{$k};
            }
        }
    }
    return \%v;
}

# Every counter of the namespaces: 0 unless %$want says otherwise.
sub expected_all {
    my ($want) = @_;
    my %e;
    for my $ns (@namespaces) {
        $e{"$ns/lookups:$_"} = 0 for @statuses;
        $e{"$ns/refusals:$_"} = 0 for @reasons;
        $e{"$ns/fill_waits:$_"} = 0 for @outcomes;
        $e{"$ns/$_"} = 0 for qw(stores stored_bytes invalidations purges local_hits local_stores
                                   local_evictions local_untrusted);
    }
    $e{$_} = $want->{$_} for keys %$want;
    return \%e;
}

# The expected counters so far (exact values), scenario by scenario.
my %want;
sub want { my %add = @_; $want{$_} = $add{$_} for keys %add }

# Polls the Prometheus text until every counter of %want (of the namespaces touched by `ns`)
# has its value (a STORE may be answered after the client's response), then checks each.
sub settle {
    my ($what, @ns) = @_;
    my %ns = map { $_ => 1 } @ns;
    my $e = expected_all(\%want);
    # stored_bytes is checked once, against Redis (below)
    my @keys = sort grep { my ($n) = m{^([^/]+)/}; $ns{$n} && (!m{/stored_bytes\z} || exists $want{$_}) }
        keys %$e;
    my $got;
    Throttle::Redis::wait_for(sub {
        $got = prometheus();
        !grep { ($got->{$_} // -1) != $e->{$_} } @keys;
    }, timeout => 10, step => 0.05);
    my @diff = map { "$_: got " . ($got->{$_} // 'none') . ", want $e->{$_}" }
        grep { ($got->{$_} // -1) != $e->{$_} } @keys;
    ok(!@diff, "$what: counters of " . join(', ', @ns)) or diag join "\n", @diff;
}

# The application pauses (SIGSTOP) until $cond holds (polled in a child), then resumes; the
# requests of $run (which the paused application holds) run meanwhile. Returns $run's result
# and whether $cond held.
sub with_paused_app {
    my ($cond, $run) = @_;
    $app->pause;
    my $resumer = fork // die "fork: $!";
    if ($resumer == 0) {
        my $ok = Throttle::Redis::wait_for($cond, timeout => 30, step => 0.02);
        $app->resume;
        POSIX::_exit($ok ? 0 : 1);
    }
    my @r = $run->();
    waitpid $resumer, 0;
    my $held = $? == 0;
    $app->resume;
    return ($held, @r);
}

# The bytes of the namespace's entries in Redis, and how many there are.
sub entry_bytes {
    my ($ns) = @_;
    my @keys = grep { /:e:\d+\.\d+:[0-9a-f]{64}\z/ }    # not :g, :l, :w
        $redis->keys("throttle:cache:{$ns:*");
    my $bytes = 0;
    $bytes += $redis->cli('STRLEN', $_) for @keys;
    return ($bytes, scalar @keys);
}

# --- nothing yet: every namespace a directive names is there, at 0; `off` and purge-only names
# are not
{
    my $p = prometheus();
    my $e = expected_all({});
    is(scalar(grep { !exists $p->{$_} } keys %$e), 0, 'every counter of the 13 namespaces is shown');
    is(scalar(grep { $p->{$_} != 0 } keys %$e), 0, 'all at 0');
    is(scalar(keys %$p), scalar(keys %$e), 'no other cache namespace (off, the purge location)');
}

# --- misses then hits; HEAD and conditional requests are looked up (counted) but never fill
{
    my $m = $t->get('/hm/a', Cookie => $A);
    is(xc($m), 'MISS', 'hm: GET a MISS');
    want('hm/lookups:MISS' => 1, 'hm/stores' => 1);
    settle('MISS stored', 'hm');
    is(xc($t->get('/hm/a', Cookie => $A)), 'HIT', 'hm: GET a HIT');
    is(xc($t->request('HEAD', '/hm/a', { Cookie => $A })), 'HIT', 'hm: HEAD a HIT');
    is(xc($t->request('GET', '/hm/a', { Cookie => $A, 'If-None-Match' => '"x"' })), 'HIT',
        'hm: conditional GET a HIT');
    is(xc($t->request('HEAD', '/hm/h', { Cookie => $A })), 'MISS', 'hm: HEAD h MISS (no fill)');
    is(xc($t->request('GET', '/hm/c', { Cookie => $A, 'If-None-Match' => '"x"' })), 'MISS',
        'hm: conditional GET c MISS (no fill)');
    is(xc($t->get('/hm/b', Cookie => $A)), 'MISS', 'hm: GET b MISS');
    want('hm/lookups:MISS' => 4, 'hm/lookups:HIT' => 3, 'hm/stores' => 2);
    settle('HEAD, conditional, second entry', 'hm');
    is(xc($t->get('/hm/b', Cookie => $A)), 'HIT', 'hm: GET b HIT');
    # Not looked up: a POST (anonymous: invalidates nothing), a location with throttle_cache off.
    is($t->request('POST', '/hm/a', {}, 'x')->{status}, 200, 'hm: anonymous POST 200');
    is(xc($t->get('/off/a', Cookie => $A)), '', 'off: no status');
    want('hm/lookups:HIT' => 4);
    settle('hits', 'hm');
}

# --- BYPASS: credentials without an identity, a cookie sent twice
{
    is(xc($t->get('/by/x', Authorization => 'Bearer abc')), 'BYPASS', 'by: Authorization, no identity: BYPASS');
    is(xc($t->get('/by/x', Cookie => 'sessionid=a; sessionid=b')), 'BYPASS', 'by: cookie twice: BYPASS');
    want('by/lookups:BYPASS' => 2);
    settle('bypass', 'by');
}

# --- an internal redirect after the lookup: counted once, under the namespace that looked up
# (rd: MISS); the cached location it lands in (hm) counts nothing, and stores nothing
{
    my $r = $t->get('/rd/x?_status=404', Cookie => $A);
    is($r->{status} . ' ' . xc($r), '200 MISS', 'rd: 404 intercepted, answered by /hm/fallback, MISS');
    is($app->count('/hm/fallback'), 1, 'rd: the fallback went upstream');
    want('rd/lookups:MISS' => 1);
    settle('internal redirect', 'rd', 'hm');
}

# --- a hit that would inflate more than throttle_cache_inflate_memory (1k) goes upstream: BYPASS,
# not HIT
{
    is(xc($t->get('/inf/x?_size=5000', Cookie => $A, 'Accept-Encoding' => 'gzip')), 'MISS', 'inf: MISS');
    want('inf/lookups:MISS' => 1, 'inf/stores' => 1);
    settle('inf filled', 'inf');
    my $h = $t->get('/inf/x?_size=5000', Cookie => $A, 'Accept-Encoding' => 'gzip');
    is(xc($h) . ' ' . ($h->{headers}{'content-encoding'} // ''), 'HIT gzip', 'inf: HIT, gzip');
    my $b = $t->get('/inf/x?_size=5000', Cookie => $A);
    is(xc($b) . ' ' . length($b->{body}), 'BYPASS 5000', 'inf: plain client, over the bound: BYPASS');
    is($app->count('/inf/x'), 2, 'inf: the BYPASS went upstream');
    want('inf/lookups:HIT' => 1, 'inf/lookups:BYPASS' => 1);
    settle('inflate bound', 'inf');
}

# --- refusals: too large (by Content-Length, and chunked while it arrives), uncacheable
{
    is(xc($t->get('/big/x?_size=5000', Cookie => $A)), 'MISS', 'big: 5000 bytes (Content-Length) MISS');
    my $c = $t->get('/big/y?_size=5000&_chunked=1', Cookie => $A);
    is(xc($c) . ' ' . length($c->{body}), 'MISS 5000', 'big: 5000 bytes chunked MISS, whole body');
    is(xc($t->get('/big/x?_size=5000', Cookie => $A)), 'MISS', 'big: not stored, MISS again');
    want('big/lookups:MISS' => 3, 'big/refusals:too_large' => 3);
    is(xc($t->get('/unc/a?_setcookie=a%3Db', Cookie => $A)), 'MISS', 'unc: Set-Cookie MISS');
    is(xc($t->get('/unc/b?_cc=no-store', Cookie => $A)), 'MISS', 'unc: no-store MISS');
    is(xc($t->get('/unc/c?_status=404', Cookie => $A)), 'MISS', 'unc: 404 (not configured) MISS');
    is(xc($t->get('/unc/c?_status=404', Cookie => $A)), 'MISS', 'unc: 404 again MISS');
    want('unc/lookups:MISS' => 4, 'unc/refusals:uncacheable' => 4);
    settle('refusals', 'big', 'unc');
}

# --- invalidations: the location's own namespace, throttle_cache_invalidate's, the upstream's
# header; anonymous, failed and header-named unknown namespaces count nothing
{
    is(xc($t->get('/inv/a', Cookie => $A)), 'MISS', 'inv: MISS');
    want('inv/lookups:MISS' => 1, 'inv/stores' => 1);
    settle('inv filled', 'inv');
    is(xc($t->get('/inv/a', Cookie => $A)), 'HIT', 'inv: HIT');
    is($t->request('POST', '/inv/a', { Cookie => $A }, 'x')->{status}, 200, 'inv: POST by alice');
    want('inv/lookups:HIT' => 1, 'inv/invalidations' => 1);
    settle('write to the cached location', 'inv', 'other');
    is(xc($t->get('/inv/a', Cookie => $A)), 'MISS', 'inv: MISS after the write');
    want('inv/lookups:MISS' => 2, 'inv/stores' => 2);
    is($t->request('POST', '/w/a', { Cookie => $A }, 'x')->{status}, 200, 'w: POST by alice');
    is($t->request('POST', '/w/a', {}, 'x')->{status}, 200, 'w: anonymous POST');
    is($t->request('POST', '/w/a?_status=500', { Cookie => $A }, 'x')->{status}, 500, 'w: POST answered 500');
    is($t->request('POST', '/hdr/a?_inv=other%2Cunknown', { Cookie => $A }, 'x')->{status}, 200,
        'hdr: POST with X-Throttle-Invalidate: other,unknown');
    want('inv/invalidations' => 2, 'other/invalidations' => 2);
    settle('throttle_cache_invalidate and the header', 'inv', 'other');
}

# --- purge: counted under the namespace; one no directive names has no counters
{
    my $r = $t->request('POST', '/purge?ns=hm');
    is($r->{status}, 200, 'purge hm: 200');
    is($t->request('POST', '/purge?ns=zzz')->{status}, 200, 'purge zzz (no directive names it): 200');
    is(xc($t->get('/hm/a', Cookie => $A)), 'MISS', 'hm: MISS after the purge');
    want('hm/purges' => 1, 'hm/lookups:MISS' => 5, 'hm/stores' => 3);
    settle('purge', 'hm');
    ok(!grep({ m{^zzz/} } keys %{ prometheus() }), 'no counters for zzz');
}

# --- fill waits, woken: 10 GETs of one key while the application is paused; the one that took
# the fill lock waits for the application, the 9 others for it. The application resumes once
# Redis ran every lookup (commandstats: the filler's lock is 1 SET, each waiter's lookup 2: the
# lock it could not take and the waiter mark).
{
    $redis->reset_stats;
    my ($held, @r) = with_paused_app(
        sub { ($redis->info_commandstats->{set} // 0) >= 19 },
        sub { $t->concurrent(10, sub { ['GET', '/st/x', { Cookie => $A }] }) });
    ok($held, 'st: every lookup ran while the application was paused');
    is($t->tally(@r)->{200}, 10, 'st: 10 x 200');
    my %xc;
    $xc{ xc($_) }++ for @r;
    is(join(', ', map { "$_ x $xc{$_}" } sort keys %xc), 'HIT x 9, MISS x 1', 'st: 1 MISS, 9 HIT');
    is($app->count('/st/x'), 1, 'st: one request reached the application');
    want('st/lookups:MISS' => 1, 'st/lookups:HIT' => 9, 'st/stores' => 1, 'st/fill_waits:woken' => 9);
    settle('woken', 'st');
}

# --- fill waits, timed out: 4 GETs while the application is paused, lock timeout 300 ms: the 3
# waiters give up (3 "waited" lines; then the application resumes) and go upstream
{
    my $mark = $t->log_mark;
    my ($held, @r) = with_paused_app(
        sub { scalar(my @l = $t->log_lines(qr/waited 300 ms for another request to fill the entry/, $mark)) >= 3 },
        sub { $t->concurrent(4, sub { ['GET', '/cap/x', { Cookie => $A }] }) });
    ok($held, 'cap: 3 waiters timed out while the application was paused');
    is(join(' ', map { xc($_) } @r), 'MISS MISS MISS MISS', 'cap: 4 MISS');
    is($app->count('/cap/x'), 4, 'cap: all 4 reached the application');
    want('cap/lookups:MISS' => 4, 'cap/stores' => 1, 'cap/fill_waits:timed_out' => 3);
    settle('timed out', 'cap');
}

# --- generation moved: alice's write is confirmed while her fill waits for the paused
# application; the fill's STORE is refused
{
    $app->pause;
    my $filler = fork // die "fork: $!";
    if ($filler == 0) {
        my $r = $t->get('/gm/x', Cookie => $A);
        POSIX::_exit(xc($r) eq 'MISS' && $r->{status} == 200 ? 0 : 1);
    }
    my $locked = Throttle::Redis::wait_for(sub { scalar(my @k = $redis->keys('throttle:cache:{gm:*:l')) },
        timeout => 10);
    ok($locked, 'gm: the fill took its lock');
    is($t->request('POST', '/gmw/', { Cookie => $A }, 'x')->{status}, 204,
        'gm: alice writes (204, once Redis confirmed the invalidation)');
    $app->resume;
    waitpid $filler, 0;
    is($?, 0, "gm: the filler's request: 200 MISS");
    want('gm/lookups:MISS' => 1, 'gm/invalidations' => 1, 'gm/refusals:generation_moved' => 1);
    settle('generation moved', 'gm');
    is(xc($t->get('/gm/x', Cookie => $A)), 'MISS', 'gm: nothing was stored');
    want('gm/lookups:MISS' => 2, 'gm/stores' => 1);
    settle('gm filled again', 'gm');
}

# --- stale: HEADs are answered HIT, then STALE once the entry expired (each counted as its
# X-Cache said); a GET then refreshes (EXPIRED, held at the paused application) while another
# is answered the stale entry (UPDATING)
{
    is(xc($t->get('/sv/x', Cookie => $A)), 'MISS', 'sv: MISS');
    want('sv/lookups:MISS' => 1, 'sv/stores' => 1);
    settle('sv filled', 'sv');
    # The refresh replaces the entry (same key): stored_bytes adds both.
    my ($len1) = entry_bytes('sv');
    want('sv/stored_bytes' => $len1);
    settle('sv: stored bytes of the first entry', 'sv');
    delete $want{'sv/stored_bytes'};    # until the refresh stored
    my %seen;
    my $stale = Throttle::Redis::wait_for(sub {
        my $s = xc($t->request('HEAD', '/sv/x', { Cookie => $A }));
        $seen{$s}++;
        $s eq 'STALE';
    }, timeout => 10, step => 0.05);
    ok($stale, 'sv: STALE after 1 s (HEADs: ' . join(', ', map { "$_ x $seen{$_}" } sort keys %seen) . ')');
    $app->pause;
    my $refresher = fork // die "fork: $!";
    if ($refresher == 0) {
        my $r = $t->get('/sv/x', Cookie => $A);
        POSIX::_exit(xc($r) eq 'EXPIRED' && $r->{status} == 200 ? 0 : 1);
    }
    my $locked = Throttle::Redis::wait_for(sub { scalar(my @k = $redis->keys('throttle:cache:{sv:*:l')) },
        timeout => 10);
    ok($locked, 'sv: the refresh took the lock');
    is(xc($t->get('/sv/x', Cookie => $A)), 'UPDATING', 'sv: UPDATING while the refresh runs');
    $app->resume;
    waitpid $refresher, 0;
    is($?, 0, 'sv: the refresh: 200 EXPIRED');
    want('sv/lookups:HIT' => $seen{HIT} // 0, 'sv/lookups:STALE' => $seen{STALE} // 0,
        'sv/lookups:EXPIRED' => 1, 'sv/lookups:UPDATING' => 1, 'sv/stores' => 2);
    settle('stale', 'sv');
    my ($len2, $entries) = entry_bytes('sv');
    is($entries, 1, 'sv: one entry, replaced by the refresh');
    want('sv/stored_bytes' => $len1 + $len2);
    settle('stale: stored bytes of both', 'sv');
}

# --- stored bytes: the entries in Redis, byte for byte
{
    my $e = expected_all(\%want);
    for my $ns (qw(hm inv st cap gm inf)) {
        my ($bytes, $entries) = entry_bytes($ns);
        is($entries, $e->{"$ns/stores"}, "$ns: one entry in Redis per store");
        ok($bytes > 0, "$ns: the entries hold $bytes bytes");
        want("$ns/stored_bytes" => $bytes);
    }
    settle('stored bytes', qw(hm inv st cap gm inf));
}

# --- ERROR: Redis hangs (SIGSTOP); the lookup times out (1 s)
{
    $redis->pause;
    my $r = $t->get('/err/x', Cookie => $A);
    $redis->resume;
    is($r->{status} . ' ' . xc($r), '200 ERROR', 'err: 200 from the application, ERROR');
    want('err/lookups:ERROR' => 1);
    settle('error', 'err');
}

# --- the whole set, exact, in both formats
{
    my $e = expected_all(\%want);
    my $p = prometheus();
    my $j = json();
    my @diff = map { "$_: prometheus " . ($p->{$_} // 'none') . ", want $e->{$_}" }
        grep { ($p->{$_} // -1) != $e->{$_} } sort keys %$e;
    ok(!@diff, 'Prometheus: every cache counter exact') or diag join "\n", @diff;
    is(scalar(keys %$p), scalar(keys %$e), 'Prometheus: no other cache sample');
    my @jdiff = map { "$_: json " . ($j->{$_} // 'none') . ", prometheus " . ($p->{$_} // 'none') }
        grep { ($j->{$_} // -1) != ($p->{$_} // -2) } sort(keys %$p), sort(keys %$j);
    ok(!@jdiff, 'JSON: the same counters and values') or diag join "\n", @jdiff;
    ok($j->{'hm/stored_bytes'} > 0 && $j->{'hm/stored_bytes'} == $p->{'hm/stored_bytes'},
        "stored_bytes > 0 and equal in both formats ($p->{'hm/stored_bytes'})");
}

# --- the lookups are the access log's $throttle_cache_status values, request by request
{
    my %log;
    my $lines = 0;
    Throttle::Redis::wait_for(sub {    # a log line is written after its response
        %log = ();
        $lines = 0;
        open my $fh, '<', $t->testdir . '/cache.log' or return 0;
        while (<$fh>) {
            my ($status, $uri) = /^(\S+) (\S+)$/ or next;
            next if $status eq '-';
            my ($ns) = $uri =~ m{^/(\w+)/} or next;    # the URI the client asked for
            $log{"$ns/lookups:$status"}++;
            $lines++;
        }
        my $sum = 0;
        $sum += $_ for map { $want{$_} } grep { /lookups:/ } keys %want;
        $lines >= $sum;
    }, timeout => 10);
    my $e = expected_all(\%want);
    my @diff = map { "$_: log " . ($log{$_} // 0) . ", counter $e->{$_}" }
        grep { /lookups:/ && ($log{$_} // 0) != $e->{$_} } sort keys %$e;
    ok(!@diff, "the access log's $lines cache statuses are the lookups counted") or diag join "\n", @diff;
}

is(scalar($t->worker_pids), 2, 'both workers alive');
$t->log_unlike(qr/exited on signal/, 'no worker crashed');
$t->done;
