#!/usr/bin/perl
# throttle_cache_local (issue 13): the per-host shared-memory tier in front of Redis, on two
# nginx instances (2 workers each) sharing one Redis and one application.
#   - a local hit is a HIT ($throttle_cache_tier local) the application never sees, and sends
#     no Redis command (INFO commandstats before and after);
#   - a purge on one host is seen on the other: 200 purges, the delay from the purge's answer
#     to the first read with new content on the other host (printed, p50/p99; not asserted),
#     every read after that one new, never older;
#   - users=on: a user's write on host 1 is seen on host 1 at once and on host 2 after the
#     message; 40 users on both hosts never see each other's entries; users=off keeps no
#     user's entry locally;
#   - bodies above max_size are not kept; HEAD, gzip and 304 look like a Redis hit;
#   - metrics count local hits and stores; reload keeps the zone; nginx -t refuses bad values.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Uncompress::Gunzip ();
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 2);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

my $conf = $redis->fill(<<'EOF');
http {
    throttle_redis %%REDIS%% timeout=1s;
    throttle_secret test-secret-0123456789abcdef;
    throttle_cache_valid 200 60s;
    throttle_cache_local zone=hot:1m ttl=10s;

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Cache $throttle_cache_status always;
        add_header X-Tier $throttle_cache_tier always;
        add_header X-Worker $pid always;

        location /anon/ { throttle_cache anon; proxy_pass http://%%APP%%; }
        location /small/ {
            throttle_cache small;
            throttle_cache_local zone=hot max_size=2k;
            throttle_cache_gzip_min_length 100k;    # stored plain: the entry is the body's size
            proxy_pass http://%%APP%%;
        }
        location /u/ {
            throttle_cache users;
            throttle_cache_user $cookie_sessionid;
            throttle_cache_local zone=hot users=on;
            proxy_pass http://%%APP%%;
        }
        location /nu/ {
            throttle_cache nousers;
            throttle_cache_user $cookie_sessionid;
            proxy_pass http://%%APP%%;
        }
        location /off/ {
            throttle_cache off1;
            throttle_cache_local off;
            proxy_pass http://%%APP%%;
        }
        location = /purge { throttle_cache_purge $arg_ns; }
        location = /metrics { throttle_metrics; }
    }
}
EOF
$t->write_conf($conf)->run;
my $t2 = Throttle::Test->new(workers => 2);
$t2->app($app);
$t2->write_conf($conf)->run;

sub xc   { $_[0]{headers}{'x-cache'} // '' }
sub tier { $_[0]{headers}{'x-tier'} // '' }
sub n_of { (Throttle::App::parse_body($_[0]{body}) // {})->{n} // -1 }
sub cookie_of { (Throttle::App::parse_body($_[0]{body}) // {})->{cookie} // '' }

# Reads until a response comes from the local tier (each worker's subscriber must be
# subscribed, and the epoch settled); returns it, or the last response.
sub until_local {
    my ($inst, $path, @h) = @_;
    my $r;
    Throttle::Redis::wait_for(sub { $r = $inst->get($path, @h); tier($r) eq 'local' },
        timeout => 10, step => 0.01);
    return $r;
}

# ---------------------------------------------------------------------------------------
# A local hit: HIT, tier local, the stored bytes, no application request, no Redis command.
{
    my $first = $t->get('/anon/a');
    is(xc($first), 'MISS', 'first read: MISS');
    is(tier($first), 'redis', 'the miss went to Redis');
    my $n = n_of($first);
    my $r = until_local($t, '/anon/a');
    is(tier($r), 'local', 'then answered from the local tier');
    is(xc($r), 'HIT', '$throttle_cache_status says HIT');
    is(n_of($r), $n, 'the stored response');
    is($app->count(sub { $_[0]{uri} eq '/anon/a' }), 1, 'the application saw one request');

    # Both workers: the zone is shared.
    my %workers;
    for (1 .. 40) {
        my $h = $t->get('/anon/a');
        $workers{ $h->{headers}{'x-worker'} }++ if tier($h) eq 'local';
    }
    is(scalar(keys %workers), 2, 'both workers answer from the shared zone');

    $redis->reset_stats;
    my $local = 0;
    for (1 .. 100) {
        my $h = $t->get('/anon/a');
        $local++ if tier($h) eq 'local' && n_of($h) == $n;
    }
    my $stats = $redis->info_commandstats;
    my %sent = %$stats;
    delete @sent{qw(ping info config|resetstat config)};    # heartbeats, this test's own
    my $commands = 0;
    $commands += $_ for values %sent;
    is($local, 100, '100 local hits');
    is($commands, 0, 'no Redis command for 100 local hits')
        or diag(explain(\%sent));
    diag(sprintf 'heartbeat PINGs meanwhile (all subscribers): %d', $stats->{ping} // 0);
    # The heartbeat: every subscriber (4: 2 hosts x 2 workers) PINGs every 200 ms.
    $redis->reset_stats;
    ok(Throttle::Redis::wait_for(sub { ($redis->info_commandstats->{ping} // 0) >= 8 },
        timeout => 5), 'the subscribers send heartbeat PINGs');
    is($app->count(sub { $_[0]{uri} eq '/anon/a' }), 1, 'still one application request');

    # HEAD, gzip and conditional requests answered from the local entry, as from Redis.
    my $head = $t->request('HEAD', '/anon/a', []);
    is($head->{status}, 200, 'HEAD from the local tier: 200');
    is(tier($head), 'local', 'HEAD: local tier');
    is($head->{body}, '', 'HEAD: no body');
}

{
    # An entry with an ETag, gzip-compressed when stored (above gzip_min_length).
    my $path = '/anon/etag?_etag=%22v1%22&_size=4000';
    $t->get($path);
    my $r = until_local($t, $path);
    is(length($r->{body}), 4000, 'plain body from the local entry');
    my $gz = $t->get($path, 'Accept-Encoding' => 'gzip');
    is(tier($gz), 'local', 'gzip client: local tier');
    is($gz->{headers}{'content-encoding'} // '', 'gzip', 'gzip client: gzip body');
    my $plain;
    IO::Uncompress::Gunzip::gunzip(\$gz->{body}, \$plain);
    is($plain, $r->{body}, 'same bytes once inflated');
    my $c = $t->get($path, 'If-None-Match' => '"v1"');
    is($c->{status}, 304, 'If-None-Match: 304 from the local tier');
    is(tier($c), 'local', '304: local tier');
    like($r->{headers}{age} // '', qr/^\d+$/, 'Age header');
}

# Bodies above max_size are not kept locally (but are in Redis).
{
    $t->get('/small/big?_size=3000');
    my $r;
    for (1 .. 20) { $r = $t->get('/small/big?_size=3000') }
    is(xc($r), 'HIT', 'a 3000-byte body above max_size=2k: HIT');
    is(tier($r), 'redis', '... from Redis, never locally');
    $t->get('/small/ok?_size=1000');
    is(tier(until_local($t, '/small/ok?_size=1000')), 'local', 'a 1000-byte body is kept locally');
}

# throttle_cache_local off in a nested location.
{
    $t->get('/off/x');
    my $r;
    for (1 .. 10) { $r = $t->get('/off/x') }
    is(tier($r), 'redis', 'throttle_cache_local off: Redis hits only');
}

# users=off (the default): a user's entry is never kept locally; anonymous ones are.
{
    $t->get('/nu/x', Cookie => 'sessionid=someone');
    my $r;
    for (1 .. 10) { $r = $t->get('/nu/x', Cookie => 'sessionid=someone') }
    is(xc($r), 'HIT', 'users=off: a user\'s HIT');
    is(tier($r), 'redis', 'users=off: from Redis');
    $t->get('/nu/y');
    is(tier(until_local($t, '/nu/y')), 'local', 'users=off: anonymous entries are local');
}

# ---------------------------------------------------------------------------------------
# Purge on host 1, read on host 2.
{
    my (@delays, $never_older, $all_new);
    $never_older = $all_new = 1;
    my $path = '/anon/purged';
    for my $i (1 .. 200) {
        $t->get($path) if $i == 1;
        my $before = until_local($t2, $path);
        if (tier($before) ne 'local') {
            fail("purge $i: host 2 never answered from its local tier");
            last;
        }
        my $old = n_of($before);
        my $p = $t->request('POST', '/purge?ns=anon', []);
        my $confirmed = time;
        unless ($p->{status} == 200) {
            fail("purge $i: $p->{status}");
            last;
        }
        # Poll host 2 until the new content shows; after that, never the old one.
        my ($seen_at, $r);
        my $deadline = $confirmed + 11;    # ttl + 1 s
        while (time < $deadline) {
            $r = $t2->get($path);
            if (n_of($r) > $old) { $seen_at = time; last }
        }
        unless (defined $seen_at) {
            $all_new = 0;
            diag("purge $i: host 2 still served the old entry after the ttl");
            last;
        }
        push @delays, ($seen_at - $confirmed) * 1000;
        for (1 .. 3) {
            $never_older = 0 if n_of($t2->get($path)) <= $old;
        }
    }
    ok($all_new, 'every purge on host 1 reached host 2 (new content within the ttl)');
    ok($never_older, 'once new content showed on host 2, no read showed the purged entry');
    is(scalar(@delays), 200, '200 purges measured');
    my @s = sort { $a <=> $b } @delays;
    diag(sprintf 'purge on host 1 -> new content on host 2 (over %d purges): p50 %.1f ms, '
        . 'p99 %.1f ms, max %.1f ms', scalar @s, $s[int(@s * 0.5)], $s[int(@s * 0.99)], $s[-1])
        if @s;
}

# ---------------------------------------------------------------------------------------
# users=on: read-your-writes on the writer's host at once, the other host after the message.
{
    my $a = 'sessionid=user-a';
    $t->get('/u/page', Cookie => $a);
    my $h1 = until_local($t, '/u/page', Cookie => $a);
    $t2->get('/u/page', Cookie => $a);
    my $h2 = until_local($t2, '/u/page', Cookie => $a);
    is(tier($h1), 'local', 'user A: local on host 1');
    is(tier($h2), 'local', 'user A: local on host 2');
    my $old = n_of($h2) > n_of($h1) ? n_of($h2) : n_of($h1);
    my $w = $t->request('POST', '/u/page', [Cookie => $a], 'x');
    is($w->{status}, 200, 'user A writes on host 1');
    my $after = $t->get('/u/page', Cookie => $a);
    cmp_ok(n_of($after), '>', $old, 'host 1, at once: new data');
    isnt(tier($after), 'local', '... not the old local entry');
    my $r;
    ok(Throttle::Redis::wait_for(sub { $r = $t2->get('/u/page', Cookie => $a); n_of($r) > $old },
        timeout => 11, step => 0.005), 'host 2: new data after the message');

    # 40 users on both hosts, each reads its own page several times: never another's.
    my @users = map { "sessionid=u$_" } 1 .. 40;
    my $wrong = 0;
    my $locals = 0;
    for my $round (1 .. 4) {
        for my $i (0 .. $#users) {
            for my $inst ($t, $t2) {
                my $x = $inst->get('/u/same', Cookie => $users[$i]);
                $wrong++ if cookie_of($x) ne $users[$i];
                $locals++ if tier($x) eq 'local';
            }
        }
    }
    is($wrong, 0, '40 users x 2 hosts x 4 rounds: each got their own page');
    cmp_ok($locals, '>', 0, "... $locals of them from the local tier");
    my $anon = $t->get('/u/same');
    $anon = until_local($t, '/u/same');
    is(cookie_of($anon), '', 'the anonymous request never gets a user\'s entry');
}

# ---------------------------------------------------------------------------------------
# Metrics
{
    my $m = $t->get('/metrics')->{body};
    like($m, qr/^nginx_throttle_cache_local_hits_total\{namespace="anon"\} [1-9]\d*$/m,
        'local hits counted');
    like($m, qr/^nginx_throttle_cache_local_stores_total\{namespace="anon"\} [1-9]\d*$/m,
        'local stores counted');
    like($m, qr/^nginx_throttle_cache_local_evictions_total\{namespace="anon"\} \d+$/m,
        'local evictions exported');
    like($m, qr/^nginx_throttle_cache_local_untrusted_total\{namespace="anon"\} \d+$/m,
        'untrusted events exported');
}

# ---------------------------------------------------------------------------------------
# Reload keeps the zone (same name and size): entries are answered locally again after it.
{
    my $created = () = $t->error_log =~ /throttle_cache_local zone "hot" keeps entries/g;
    is($created, 1, 'the zone was laid out once at start');
    my $mark = $t->log_mark;
    $t->reload;
    my $r = until_local($t, '/anon/a');
    is(tier($r), 'local', 'after reload: local hits again');
    $created = () = $t->error_log =~ /throttle_cache_local zone "hot" keeps entries/g;
    is($created, 1, 'reload: the zone was kept (attached, not laid out again)');
    $t->log_unlike(qr/\[(?:alert|emerg|crit)\]/, 'reload: no alert', $mark);
}

# ---------------------------------------------------------------------------------------
# nginx -t
sub conf_with {
    my ($directive, $extra) = @_;
    $extra //= '';
    return $redis->fill(<<"EOF");
http {
    throttle_redis %%REDIS%%;
    throttle_secret test-secret-0123456789abcdef;
    $extra
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { throttle_cache ns; $directive proxy_pass http://%%APP%%; }
    }
}
EOF
}
for my $case (
    ['throttle_cache_local zone=z:1m ttl=0;', qr/invalid ttl "ttl=0"/],
    ['throttle_cache_local zone=z:1m ttl=2h;', qr/invalid ttl "ttl=2h"/],
    ['throttle_cache_local zone=z:1m ttl=abc;', qr/invalid ttl "ttl=abc"/],
    ['throttle_cache_local zone=z:10k;', qr/zone "z" is too small/],
    ['throttle_cache_local zone=z:0;', qr/invalid zone size "zone=z:0"/],
    ['throttle_cache_local zone=:1m;', qr/invalid zone "zone=:1m"/],
    ['throttle_cache_local zone=z:1m max_size=0;', qr/invalid max_size "max_size=0"/],
    ['throttle_cache_local zone=z:1m max_size=1m;', qr/max_size=1048576 does not fit zone "z"/],
    ['throttle_cache_local zone=z:1m users=maybe;', qr/invalid users "users=maybe"/],
    ['throttle_cache_local zone=z:1m color=red;', qr/invalid parameter "color=red"/],
    ['throttle_cache_local ttl=1s;', qr/"throttle_cache_local" must have "zone" parameter/],
    ['throttle_cache_local zone=z;', qr/throttle_cache_local zone "z" in \S+ has no size/],
    ['throttle_cache_local zone=z:1m;', qr/zone "z" is already declared with another size/,
     'throttle_cache_local zone=z:2m;'],
    ['throttle_cache_local zone=z:1m; throttle_cache_local off;', qr/is duplicate/],
) {
    my ($directive, $re, $extra) = @$case;
    my ($ok, $out) = $t->nginx_t(conf_with($directive, $extra));
    ok(!$ok, "nginx -t refuses: $directive");
    like($out, $re, "... saying $re");
}
{
    my ($ok, $out) = $t->nginx_t(conf_with('throttle_cache_local zone=z;',
        'throttle_cache_local zone=z:1m ttl=5s max_size=16k users=on;'));
    ok($ok, 'zone=NAME:SIZE at http level, zone=NAME in a location: accepted') or diag($out);
}

is(scalar($t->worker_pids), 2, 'host 1: both workers alive');
is(scalar($t2->worker_pids), 2, 'host 2: both workers alive');
$t2->log_unlike(qr/exited on signal/, 'host 2: no worker crashed');
$t2->finish;
$t->done;
