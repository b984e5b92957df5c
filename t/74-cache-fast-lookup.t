#!/usr/bin/perl
# The fast cache lookup (src/ngx/cache/fast_lookup.hpp): on one Redis, a hit is read with one
# MGET of the generation keys and the entry key under the generations the worker last saw, no
# script. With a real nginx (4 workers), a real Redis and an application that counts requests:
# hits served by the MGET are byte for byte the stored answer (gzip'd and plain clients), and
# Redis sees MGETs and no EVALSHA for them (INFO commandstats); after a user's write the very
# next read misses, on any worker, also workers whose memo still holds the old generation;
# a namespace purge likewise; two users never see each other's entry; a generation key that
# holds a hash serves nothing (the script reports the error: ERROR, upstream), nor does a nil
# generation; Redis gone: ERROR or BYPASS, the upstream answers, as without the fast path.

use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 4)->need_fds(200);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_redis %%REDIS%% timeout=1s;
    throttle_cache_secret test-secret-fast-lookup-0123456789;
    throttle_cache_user $cookie_sessionid;
    throttle_cache_valid 200 60s;
    add_header X-Cache $throttle_cache_status always;
    add_header X-Worker $pid always;
    proxy_http_version 1.1;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096;

        location /api/     { throttle_cache main;   proxy_pass http://127.0.0.1:%%APP_PORT%%; }
        location /other/   { throttle_cache other;  proxy_pass http://127.0.0.1:%%APP_PORT%%; }
        location /typed/   { throttle_cache typed;  proxy_pass http://127.0.0.1:%%APP_PORT%%; }
        location /typedns/ { throttle_cache typedns; proxy_pass http://127.0.0.1:%%APP_PORT%%; }
        location /write/   { throttle_cache_invalidate main; proxy_pass http://127.0.0.1:%%APP_PORT%%; }
        location /purge    { throttle_cache_purge $arg_ns; }
    }
}
EOF

sub xc { $_[0]{headers}{'x-cache'} // '' }
sub body { Throttle::App::parse_body($_[0]{body}) // { n => -1, cookie => '' } }

sub get_as {
    my ($user, $path, @h) = @_;
    return $t->get($path, Cookie => "sessionid=$user", @h);
}

# GETs until one is a HIT (the fill's STORE runs after the response): that HIT.
sub until_hit {
    my ($user, $path, @h) = @_;
    my $deadline = time + 10;
    while (time < $deadline) {
        my $r = get_as($user, $path, @h);
        return $r if xc($r) eq 'HIT';
        sleep 0.02;
    }
    return undef;
}

sub stats { $redis->info_commandstats }

# --- hits through the MGET, byte for byte ----------------------------------------------------
{
    my $path = '/api/items?_size=3000';    # stored gzip'd (>= 1k)
    my $miss = get_as('alice', $path);
    is(xc($miss), 'MISS', 'first read: MISS');
    my $hit = until_hit('alice', $path);
    ok($hit, 'then a HIT');
    is($hit->{body}, $miss->{body}, 'the HIT is the stored answer, byte for byte');
    my ($ug) = $redis->keys('*{main:*}:g');
    my ($ng) = $redis->keys('*{main}:g');
    is($redis->get($ug // 'none'), '0', 'STORE created the user generation key as "0"');
    is($redis->get($ng // 'none'), '0', 'and the namespace one');

    my $gz = until_hit('alice', $path, 'Accept-Encoding' => 'gzip');
    ok($gz && ($gz->{headers}{'content-encoding'} // '') eq 'gzip', 'a gzip client gets the gzip body');

    $redis->reset_stats;
    my (%workers, $bad);
    for (1 .. 40) {
        my $r = get_as('alice', $path);
        $bad++ unless xc($r) eq 'HIT' && $r->{body} eq $miss->{body};
        $workers{ $r->{headers}{'x-worker'} // '' }++;
    }
    ok(!$bad, '40 reads on new connections: all HIT with the same bytes');
    my $s = stats();
    diag('workers that served them: ' . scalar(keys %workers) . '; mget ' . ($s->{mget} // 0)
        . ', evalsha ' . ($s->{evalsha} // 0));
    ok(($s->{mget} // 0) >= 1 && ($s->{mget} // 0) <= 40, 'Redis saw MGETs for the hits');
    is($s->{evalsha} // 0, 0, 'and no script call');
    is($s->{get} // 0, 0, 'nor a GET');

    # A miss goes through the script after the MGET (and takes the fill lock).
    $redis->reset_stats;
    my $m2 = get_as('alice', '/api/items?_size=3000&other=1');
    is(xc($m2), 'MISS', 'another URL: MISS');
    $s = stats();
    ok(($s->{mget} // 0) >= 1 && ($s->{evalsha} // 0) >= 1, 'a miss: the MGET, then the script');
}

# --- a user's write: the very next read misses, on every worker --------------------------------
{
    my $path = '/api/feed';
    get_as('bob', $path);
    my $hit = until_hit('bob', $path);
    my $old = body($hit)->{n};
    # Every worker's memo learns bob's generation 0 (many reads over new connections).
    my %w;
    for (1 .. 40) {
        my $r = get_as('bob', $path);
        $w{ $r->{headers}{'x-worker'} // '' }++ if xc($r) eq 'HIT';
    }
    diag('workers that served bob from the fast path before his write: ' . scalar(keys %w));
    my $wr = $t->request('POST', '/write/x', [Cookie => 'sessionid=bob'], 'x=1');
    is($wr->{status}, 200, 'bob writes');
    my ($old_seen, $first) = (0, undef);
    for (1 .. 40) {
        my $r = get_as('bob', $path);
        $first //= $r;
        $old_seen++ if body($r)->{n} == $old;
    }
    is(xc($first), 'MISS', 'the very next read: MISS');
    is($old_seen, 0, '40 reads after the write, on every worker: never the old entry');

    # Several workers with the old generation in their memo: write again, then concurrent reads.
    my $cur = body(until_hit('bob', $path))->{n};
    $t->request('POST', '/write/x', [Cookie => 'sessionid=bob'], 'x=1');
    my @r = $t->concurrent(24, sub { ['GET', $path, [Cookie => 'sessionid=bob']] });
    my $stale = grep { body($_)->{n} == $cur || $_->{status} != 200 } @r;
    is($stale, 0, '24 concurrent reads after a second write: none has the old entry');
}

# --- a namespace purge -------------------------------------------------------------------------
{
    my $path = '/api/purged';
    my %old;
    for my $u (qw(carol dave)) {
        get_as($u, $path);
        $old{$u} = body(until_hit($u, $path))->{n};
    }
    get_as($_, $path) for (qw(carol dave)) x 10;
    my $p = $t->request('POST', '/purge?ns=main', []);
    like($p->{body}, qr/"generation":\d+/, 'purge of main');
    my $old_seen = 0;
    for my $i (1 .. 30) {
        for my $u (qw(carol dave)) {
            my $r = get_as($u, $path);
            $old_seen++ if body($r)->{n} == $old{$u};
        }
    }
    is($old_seen, 0, 'after the purge, 60 reads: never an entry from before it');
}

# --- two users never see each other's entry ------------------------------------------------------
{
    my $path = '/other/shared-path';
    for my $u (qw(erin frank)) {
        get_as($u, $path);
        until_hit($u, $path);
    }
    my @r = $t->concurrent(40, sub {
        my $u = $_[0] % 2 ? 'erin' : 'frank';
        ['GET', $path, [Cookie => "sessionid=$u"]];
    });
    my $crossed = 0;
    for my $i (0 .. $#r) {
        my $u = $i % 2 ? 'erin' : 'frank';
        $crossed++ unless body($r[$i])->{cookie} eq "sessionid=$u";
    }
    is($crossed, 0, '40 interleaved reads of two users: each gets their own entry');
}

# --- generation keys of another type, and missing ones ------------------------------------------
{
    my $path = '/typed/x';
    get_as('gina', $path);
    my $hit = until_hit('gina', $path);
    ok($hit, 'gina: HIT');
    my ($ug) = $redis->keys('*{typed:*}:g');
    ok($ug, 'her user generation key');
    $redis->cli('DEL', $ug);
    $redis->cli('HSET', $ug, 'f', '1');
    my $before = $app->count(sub { $_[0]{path} eq $path });
    my $errs = 0;
    for (1 .. 8) {
        my $r = get_as('gina', $path);
        $errs++ if xc($r) =~ /^(ERROR|BYPASS)\z/ && $r->{status} == 200;
    }
    # ERROR: the script's error reply; BYPASS once three in a row opened the circuit breaker.
    is($errs, 8, 'a hash at her generation key: no HIT, ERROR or BYPASS, upstream');
    is($app->count(sub { $_[0]{path} eq $path }) - $before, 8, 'every one answered by the application');
    $redis->cli('DEL', $ug);

    # The entry stays stored under generation 0.0 while the user key is missing: served, by the
    # script (a nil generation is never trusted by the MGET).
    my $path2 = '/typedns/y';
    get_as('hank', $path2);
    my $h = until_hit('hank', $path2);
    my ($ng) = $redis->keys('*{typedns}:g');
    ok($ng, 'the namespace generation key');
    $redis->cli('DEL', $ng);
    $redis->reset_stats;
    my $r = get_as('hank', $path2);
    is(xc($r), 'HIT', 'namespace generation key missing: the script still finds the 0.0 entry');
    is($r->{body}, $h->{body}, 'the same bytes');
    ok((stats()->{evalsha} // 0) >= 1, 'through the script');
    $redis->cli('HSET', $ng, 'f', '1');
    $r = get_as('hank', $path2);
    like(xc($r), qr/^(ERROR|BYPASS)\z/, 'a hash at the namespace generation key: ERROR or BYPASS');
    $redis->cli('DEL', $ng);
}

# --- Redis gone -----------------------------------------------------------------------------------
{
    my $path = '/api/gone';
    get_as('ivan', $path);
    ok(until_hit('ivan', $path), 'ivan: HIT');
    $redis->stop;
    my $before = $app->count(sub { $_[0]{path} eq $path });
    my $ok = 0;
    for (1 .. 6) {
        my $r = get_as('ivan', $path);
        $ok++ if $r->{status} == 200 && xc($r) =~ /^(ERROR|BYPASS)\z/;
    }
    is($ok, 6, 'Redis stopped: every read ERROR or BYPASS, 200');
    is($app->count(sub { $_[0]{path} eq $path }) - $before, 6, 'answered by the application');
}

$t->done;
