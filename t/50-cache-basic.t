#!/usr/bin/perl
# The response cache in front of a real application (Throttle::App, counting its requests),
# with a real Redis and nginx (4 workers): a hit never reaches the application and is the
# stored bytes; HEAD is answered from the GET entry; query arguments are keyed in name order;
# every user (and the anonymous one) has their own entries, even under concurrency, and a
# request with credentials but no identity is never cached; requests that would collide under
# a naive key concatenation are distinct; what must not be stored is not stored; TTLs (the
# configured one, max-age, s-maxage, X-Accel-Expires, a cached 404); 1 MB bodies, bodies that
# went through a proxy temp file, bodies stored gzip'd (served gzip'd or plain); the stale
# window (EXPIRED for the refresher, UPDATING for the others); POST is never cached.

use strict;
use warnings;
use Test::More;
use IO::Uncompress::Gunzip ();
use Time::HiRes qw(time sleep);
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new->need_fds(400);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

# timeout=1s: this file is about what the cache does, not about a slow Redis (ERROR).
$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_redis %%REDIS%% timeout=1s;
    throttle_cache_secret test-secret-0123456789abcdef;
    add_header X-Cache $throttle_cache_status always;
    proxy_http_version 1.1;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096;
        throttle_cache main;
        throttle_cache_user $cookie_sessionid;
        throttle_cache_valid 200 60s;

        location / {
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /short/ {
            throttle_cache_valid 200 1s;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /v404/ {
            throttle_cache_valid 200 60s;
            throttle_cache_valid 404 1s;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /any/ {
            throttle_cache_valid any 60s;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /small/ {
            throttle_cache_max_size 10k;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /tmpfile/ {
            proxy_buffers 2 4k;
            proxy_buffer_size 4k;
            proxy_busy_buffers_size 4k;
            proxy_max_temp_file_size 10m;
            limit_rate 2m;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /stale/ {
            throttle_cache_valid 200 1s;
            throttle_cache_stale 30s;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
    }
}
EOF

sub xc   { $_[0]{headers}{'x-cache'} // '' }
sub body { Throttle::App::parse_body($_[0]{body}) // {} }
sub n_of { body($_[0])->{n} // -1 }
# Requests the application received for exactly this uri (path and query as sent).
sub hits { my ($uri) = @_; $app->count(sub { $_[0]{uri} eq $uri }) }
sub gunzip_str {
    my ($z) = @_;
    my $out;
    IO::Uncompress::Gunzip::gunzip(\$z => \$out) or return undef;
    return $out;
}
sub tally_xc {
    my %n;
    $n{ xc($_) }++ for @_;
    return join ', ', map { "$_ x $n{$_}" } sort keys %n;
}

# ------------------------------------------------------------------------------------------
# miss, then hit

{
    my $u = '/basic/a?x=1';
    my $m = $t->get($u);
    is($m->{status}, 200, 'miss: 200');
    is(xc($m), 'MISS', 'first GET: MISS');
    ok(!exists $m->{headers}{age}, 'a MISS has no Age');
    my $h = $t->get($u);
    is(xc($h), 'HIT', 'second GET: HIT');
    is(hits($u), 1, 'the application saw one request');
    is($h->{body}, $m->{body}, 'hit body identical to the miss body');
    is(n_of($h), n_of($m), 'hit body made by the first request');
    like($h->{headers}{age} // '', qr/^\d+$/, 'a HIT has Age');
    is($h->{headers}{'content-type'}, 'application/json', 'stored Content-Type served');
    is($h->{headers}{'content-length'}, length $m->{body}, 'hit Content-Length');
    is($h->{headers}{'x-app-n'}, $m->{headers}{'x-app-n'}, 'stored upstream header served');

    my $hd = $t->request('HEAD', $u);
    is($hd->{status}, 200, 'HEAD after GET: 200');
    is(xc($hd), 'HIT', 'HEAD after GET: HIT');
    is(hits($u), 1, 'HEAD after GET: no request reached the application');
    is($hd->{headers}{'content-length'}, length $m->{body}, 'HEAD: Content-Length of the GET body');
    is($hd->{body}, '', 'HEAD: no body');
    unlike($hd->{raw}, qr/\r\n\r\n.+/s, 'HEAD: nothing after the header');

    my $hu = '/basic/head-first';
    my $h1 = $t->request('HEAD', $hu);
    is(xc($h1), 'MISS', 'HEAD miss: MISS');
    is($h1->{body}, '', 'HEAD miss: no body');
    is(hits($hu), 1, 'HEAD miss went upstream');
    is($app->last_request(sub { $_[0]{uri} eq $hu })->{method}, 'HEAD', 'as HEAD');
    my $h2 = $t->request('HEAD', $hu);
    is(xc($h2), 'MISS', 'second HEAD: MISS again (HEAD does not store)');
    is(hits($hu), 2, 'second HEAD went upstream');
    my $g = $t->get($hu);
    is(xc($g), 'MISS', 'GET after HEAD misses: MISS (nothing was stored)');
    is(hits($hu), 3, 'GET went upstream');
    is(body($g)->{method}, 'GET', 'GET body made by a GET');
    is(n_of($t->get($hu)), n_of($g), 'then GET hits its own entry');
    is(hits($hu), 3, 'no more upstream requests');
}

# ------------------------------------------------------------------------------------------
# query argument order

{
    my $r1 = $t->get('/q/order?b=2&a=1');
    my $r2 = $t->get('/q/order?a=1&b=2');
    is($app->count('/q/order'), 1, '?b=2&a=1 then ?a=1&b=2: one upstream request');
    is(xc($r2), 'HIT', '?a=1&b=2: HIT');
    is($r2->{body}, $r1->{body}, '?a=1&b=2: the body of ?b=2&a=1');

    my $s1 = $t->get('/q/rep?a=1&a=2');
    my $s2 = $t->get('/q/rep?a=2&a=1');
    is($app->count('/q/rep'), 2, '?a=1&a=2 and ?a=2&a=1: two upstream requests');
    is(xc($s2), 'MISS', '?a=2&a=1: MISS');
    is(body($s2)->{uri}, '/q/rep?a=2&a=1', '?a=2&a=1: its own body');
    is(body($t->get('/q/rep?a=1&a=2'))->{uri}, '/q/rep?a=1&a=2', '?a=1&a=2 hits its own entry');
    is($app->count('/q/rep'), 2, 'still two');
}

# ------------------------------------------------------------------------------------------
# users: concurrent requests of 30 users for one URL

{
    my $users = 30;
    my $per = 4;
    my $u = '/iso/x?_delay=200';
    my @r = $t->concurrent($users * $per, sub {
        ['GET', $u, { Cookie => sprintf('sessionid=u%02d', $_[0] % $users) }];
    });
    is($t->tally(@r)->{200}, $users * $per, "$users users x $per concurrent requests: all 200");
    is(hits($u), $users, "one upstream request per user ($users)");
    is(tally_xc(@r), "HIT x " . ($users * ($per - 1)) . ", MISS x $users",
        'one MISS per user, the others HIT (waited for the fill)');
    my $wrong = 0;
    my %n;
    for my $i (0 .. $#r) {
        my $cookie = sprintf('sessionid=u%02d', $i % $users);
        my $b = body($r[$i]);
        if (($b->{cookie} // '') ne $cookie) {
            $wrong++;
            diag("request $i ($cookie) got the body of " . ($b->{cookie} // 'nothing'))
                if $wrong <= 5;
        }
        $n{$cookie}{ $b->{n} // -1 } = 1;
    }
    is($wrong, 0, 'every response carries the requester\'s own cookie');
    is(scalar(grep { keys %{ $n{$_} } == 1 } keys %n), $users,
        'all responses of one user are the same body');
    is(scalar(keys %{ { map { (keys %{ $n{$_} })[0] => 1 } keys %n } }), $users,
        'and each user has a different one');

    my @again = $t->concurrent($users, sub {
        ['GET', $u, { Cookie => sprintf('sessionid=u%02d', $_[0]) }];
    });
    is(tally_xc(@again), "HIT x $users", 'second round: every user HIT');
    is(hits($u), $users, 'second round: nothing upstream');
    is(scalar(grep {
        my $c = sprintf('sessionid=u%02d', $_);
        (body($again[$_])->{cookie} // '') eq $c && exists $n{$c}{ n_of($again[$_]) }
    } 0 .. $users - 1), $users, 'second round: each user their own first body');

    my $a1 = $t->get($u);
    is(xc($a1), 'MISS', 'anonymous: MISS (its own entry)');
    is(body($a1)->{cookie}, '', 'anonymous: a body made without cookie');
    is(hits($u), $users + 1, 'anonymous went upstream');
    my $a2 = $t->get($u);
    is(xc($a2), 'HIT', 'anonymous again: HIT');
    is($a2->{body}, $a1->{body}, 'anonymous again: the anonymous body');

    # credentials without identity
    my $cu = '/iso/cred';
    my @c = map { $t->get($cu, Cookie => 'other=1') } 1 .. 2;
    is_deeply([map { xc($_) } @c], ['BYPASS', 'BYPASS'], 'Cookie without sessionid: BYPASS');
    is(hits($cu), 2, 'Cookie without sessionid: both upstream');
    is_deeply([map { body($_)->{cookie} } @c], ['other=1', 'other=1'], 'each its own answer');
    isnt(n_of($c[0]), n_of($c[1]), 'two different answers');
    my @z = map { $t->get($cu, Authorization => 'Bearer tok') } 1 .. 2;
    is_deeply([map { xc($_) } @z], ['BYPASS', 'BYPASS'], 'Authorization without identity: BYPASS');
    is(hits($cu), 4, 'Authorization: both upstream');
    is(body($z[1])->{authorization}, 'Bearer tok', 'Authorization: its own answer');
    my $an = $t->get($cu);
    is(xc($an), 'MISS', 'anonymous after BYPASSes: MISS (they stored nothing)');
    is(body($an)->{cookie} . body($an)->{authorization}, '', 'anonymous: a body made without credentials');
    is(hits($cu), 5, 'anonymous went upstream');

    # Redis sees hashed identities only
    my @keys = $redis->keys('throttle:cache:*');
    my @ids = map { /^throttle:cache:\{main:([^}]*)\}:e:/ ? $1 : () } @keys;
    my %ids = map { $_ => 1 } @ids;
    ok(@ids && !grep({ !/^(?:anon|[0-9a-f]{64})$/ } keys %ids),
        'entry keys: the identity is "anon" or 64 hex digits') or diag(join "\n", sort keys %ids);
    cmp_ok(scalar(grep { $_ ne 'anon' } keys %ids), '==', $users, "$users user identities in entry keys");
    ok(!grep({ /sessionid|u\d\d/ } @keys), 'no cookie value in any Redis key');
}

# ------------------------------------------------------------------------------------------
# requests that collide under a naive key: each is its own entry

{
    my @uris = (
        '/col/a?b=c', '/col/a%3Fb=c', '/col/ab', '/col/a?b', '/col/a%3Fb', '/col/a?b=',
        '/col/p/x', '/col/p%2Fx', '/col/q1?23', '/col/q12?3',
        '/col/q?a=1&b=2', '/col/q?a=1%26b=2', '/col/q?a=1%26b%3D2', '/col/q?a=1;b=2',
        '/col/q?a=b=c', '/col/q?a=b%3Dc', '/col/q?a%3Db=c', '/col/q?a==bc', '/col/q?a=b&=c',
        '/col/q?a=&b', '/col/q?a&b=', '/col/q?a&b', '/col/q?a=&b=',
        '/col/q?a=%00', '/col/q?a=', '/col/q?a', '/col/q?a%00=', '/col/q?a=%2500',
        '/col/q?a=x+y', '/col/q?a=x%20y',
    );
    my @first = map { $t->get($_) } @uris;
    my @bad = grep { xc($first[$_]) ne 'MISS' || (body($first[$_])->{uri} // '') ne $uris[$_] }
        0 .. $#uris;
    is(scalar @bad, 0, scalar(@uris) . ' crafted requests: each a MISS with its own body')
        or diag(join "\n", map { "$uris[$_]: " . xc($first[$_]) . " $first[$_]{body}" } @bad);
    @bad = grep { hits($uris[$_]) != 1 } 0 .. $#uris;
    is(scalar @bad, 0, 'each reached the application once') or diag("@uris[@bad]");
    my @second = map { $t->get($_) } @uris;
    @bad = grep { xc($second[$_]) ne 'HIT' || $second[$_]{body} ne $first[$_]{body} } 0 .. $#uris;
    is(scalar @bad, 0, 'again: each a HIT with its own first body')
        or diag(join "\n", map { "$uris[$_]: " . xc($second[$_]) . " $second[$_]{body}" } @bad);
    is($app->count(qr{^/col/}), scalar @uris, 'no more upstream requests');
    is($t->get('/col/x%00y')->{status}, 400, 'a %00 in the path: 400 from nginx');
    is($app->count(qr{^/col/x}), 0, 'and never upstream');
}

# ------------------------------------------------------------------------------------------
# not stored

# [name, uri, headers, expected status]: two GETs, both upstream, each its own body.
my @not_stored = (
    ['Set-Cookie',            '/ns/sc?_setcookie=a%3D1',                 [], 200],
    ['no-store',              '/ns/nostore?_cc=no-store',                [], 200],
    ['no-cache',              '/ns/nocache?_cc=no-cache',                [], 200],
    ['private, anonymous',    '/ns/private?_cc=private',                 [], 200],
    ['Vary: *',               '/ns/varystar?_vary=*',                    [], 200],
    ['Vary: Cookie with a cookie identity', '/ns/varyck?_vary=Cookie', [Cookie => 'sessionid=p1'], 200],
    ['201, only 200 valid',   '/ns/s201?_status=201',                    [], 201],
    ['500',                   '/ns/s500?_status=500',                    [], 500],
    ['500 with "any"',        '/any/s500?_status=500',                   [], 500],
    ['X-Accel-Expires: 0',    '/ns/xae0?_xae=0',                         [], 200],
    ['size > max (10k)',      '/small/big?_size=20000',                  [], 200],
    ['chunked, size > max',   '/small/bigch?_size=20000&_chunked=1',     [], 200],
    ['1 MB + 1 > 1m',         '/ns/over?_size=1048577',                  [], 200],
);
for my $c (@not_stored) {
    my ($name, $u, $h, $status) = @$c;
    my @r = map { $t->request('GET', $u, $h) } 1 .. 2;
    is_deeply([map { $_->{status} } @r], [$status, $status], "$name: $status");
    is(hits($u), 2, "$name: not stored, both upstream");
    is(xc($r[1]), 'MISS', "$name: second is a MISS");
    isnt(n_of($r[0]), n_of($r[1]), "$name: two different answers");
    if ($u =~ /_size=(\d+)/) {
        my $size = $1;
        ok(length($r[1]{body}) == $size && body($r[1])->{pattern_ok},
            "$name: the client gets the whole body ($size bytes)");
    }
}

{
    # An upstream that compresses (Django's GZipMiddleware): stored inflated, then served gzip'd
    # to clients that accept it and plain to the others, all from the one upstream answer.
    my $u = '/ns/gz?_gzip=1&_size=5000';
    my @r = map { $t->get($u, 'Accept-Encoding' => 'gzip') } 1 .. 2;
    my $plain = $t->get($u);
    is(hits($u), 1, 'upstream gzip: stored (one upstream request for three)');
    is(xc($r[0]), 'MISS', 'upstream gzip: first is a MISS');
    is(xc($r[1]), 'HIT', 'upstream gzip: second is a HIT');
    is(xc($plain), 'HIT', 'upstream gzip: a plain client hits too');
    is($r[0]{headers}{'content-encoding'}, 'gzip', 'upstream gzip: the miss is passed on gzip\'d');
    is($r[1]{headers}{'content-encoding'}, 'gzip', 'upstream gzip: the gzip client gets gzip');
    ok(!exists $plain->{headers}{'content-encoding'}, 'upstream gzip: the plain client gets plain');
    my $first = gunzip_str($r[0]{body});
    my $p = Throttle::App::parse_body($first);
    ok($p && $p->{length} == 5000 && $p->{pattern_ok}, 'upstream gzip: the whole body');
    is(gunzip_str($r[1]{body}), $first, 'upstream gzip: the hit inflates to the same bytes');
    is($plain->{body}, $first, 'upstream gzip: the plain hit is the same bytes');

    # A coding the module cannot inflate is not stored.
    $u = '/ns/br?_hdr=Content-Encoding:br&_size=3000';
    $t->get($u) for 1 .. 2;
    is(hits($u), 2, 'Content-Encoding: br: not stored');

    my $mark = $t->log_mark;
    $u = '/ns/abort?_abort=1000&_size=100000';
    my @a = map { $t->get($u) } 1 .. 2;
    ok(length($a[0]{body}) < 100000 && length($a[1]{body}) < 100000, 'truncated upstream: the client gets a short body');
    is($a[1]{error}, 'short body', 'truncated upstream: the client sees the error (short body, connection closed)');
    is(hits($u), 2, 'truncated upstream: not stored');
    ok(scalar $t->log_lines(qr/upstream prematurely closed/, $mark), 'truncated upstream: logged');

    $u = '/ns/abortch?_abort=5000&_size=20000&_chunked=1';
    my @b = map { $t->get($u) } 1 .. 2;
    ok(length($b[1]{body}) < 20000 && $b[1]{raw} !~ /\r\n0\r\n\r\n\z/, 'truncated chunked: no last chunk');
    is(hits($u), 2, 'truncated chunked: not stored');

    # stored after all: private with an identity, Vary: Accept-Encoding, Vary on another
    # request header (a variant: t/62-cache-vary.t), 201 with "any", a body of exactly the max
    # size
    for my $s (['private with identity', '/ns/privu?_cc=private', [Cookie => 'sessionid=p1']],
               ['Vary: Accept-Encoding', '/ns/varyae?_vary=Accept-Encoding', []],
               ['Vary: Accept-Language', '/ns/varylang?_vary=Accept-Language', []],
               ['201 with "any"', '/any/s201?_status=201', []],
               ['10240 bytes, max 10k', '/small/exact?_size=10240', []]) {
        my ($name, $u2, $h) = @$s;
        my @r2 = map { $t->request('GET', $u2, $h) } 1 .. 2;
        is(hits($u2), 1, "$name: stored (one upstream request)");
        ok(xc($r2[1]) eq 'HIT' && $r2[1]{body} eq $r2[0]{body}, "$name: HIT, the same body");
    }
}

# ------------------------------------------------------------------------------------------
# big bodies, temp files, gzip

{
    my $u = '/big/1m?_size=1048576';
    my $m = $t->get($u);
    is(length $m->{body}, 1048576, '1 MB: the miss has the whole body');
    my $h = $t->get($u);
    is(xc($h), 'HIT', '1 MB (= max 1m): HIT');
    is(hits($u), 1, '1 MB: one upstream request');
    my $p = body($h);
    ok($p->{length} == 1048576 && $p->{pattern_ok} && $p->{n} == n_of($m), '1 MB: hit body whole, filler intact');
    ok($h->{body} eq $m->{body}, '1 MB: hit byte-identical to the miss');
    my $hz = $t->get($u, 'Accept-Encoding' => 'gzip');
    is($hz->{headers}{'content-encoding'}, 'gzip', '1 MB: gzip\'d to a client that accepts it');
    ok((gunzip_str($hz->{body}) // '') eq $m->{body}, '1 MB: which gunzips to the same bytes');

    my $mark = $t->log_mark;
    $u = '/tmpfile/x?_size=400000';
    $m = $t->get($u);
    ok(length $m->{body} == 400000 && body($m)->{pattern_ok}, 'temp file: the miss has the whole body');
    ok(scalar $t->log_lines(qr/an upstream response is buffered to a temporary file/, $mark),
        'temp file: the response went through a proxy temp file');
    $h = $t->get($u);
    is(xc($h), 'HIT', 'temp file: HIT');
    is(hits($u), 1, 'temp file: one upstream request');
    ok($h->{body} eq $m->{body}, 'temp file: hit byte-identical to the miss');

    $u = '/gz/a?_size=5000';
    $m = $t->get($u);
    ok(!$m->{headers}{'content-encoding'} && length $m->{body} == 5000, 'gzip: the miss is plain');
    my $plain = $t->get($u);
    my $gz = $t->get($u, 'Accept-Encoding' => 'gzip, deflate');
    my $q0 = $t->get($u, 'Accept-Encoding' => 'gzip;q=0, identity');
    is(hits($u), 1, 'gzip: one upstream request');
    is_deeply([map { xc($_) } $plain, $gz, $q0], [qw(HIT HIT HIT)], 'gzip: three HITs');
    is($gz->{headers}{'content-encoding'}, 'gzip', 'Accept-Encoding: gzip → Content-Encoding: gzip');
    ok(length $gz->{body} < 2500, 'gzip: compressed (' . length($gz->{body}) . ' bytes)');
    is($gz->{headers}{'content-length'}, length $gz->{body}, 'gzip: Content-Length of the gzip\'d body');
    ok((gunzip_str($gz->{body}) // '') eq $plain->{body}, 'gzip: gunzips to exactly the plain hit');
    ok(!exists $plain->{headers}{'content-encoding'}, 'no Accept-Encoding: no Content-Encoding');
    ok($plain->{body} eq $m->{body}, 'no Accept-Encoding: the plain bytes of the miss');
    ok(!exists $q0->{headers}{'content-encoding'} && $q0->{body} eq $m->{body}, 'gzip;q=0: plain');
    like($gz->{headers}{vary} // '', qr/^Accept-Encoding$/i, 'gzip hit: Vary: Accept-Encoding');
    like($plain->{headers}{vary} // '', qr/^Accept-Encoding$/i, 'plain hit: Vary: Accept-Encoding');

    for my $s ([1023, 0], [1024, 1]) {
        my ($size, $zipped) = @$s;
        $u = "/gz/min?_size=$size";
        $m = $t->get($u);
        my $r = $t->get($u, 'Accept-Encoding' => 'gzip');
        is(xc($r), 'HIT', "$size bytes: HIT");
        if ($zipped) {
            is($r->{headers}{'content-encoding'}, 'gzip', "$size bytes (>= 1k): stored gzip'd");
            ok((gunzip_str($r->{body}) // '') eq $m->{body}, "$size bytes: gunzips to the body");
        } else {
            ok(!exists $r->{headers}{'content-encoding'} && !exists $r->{headers}{vary},
                "$size bytes (< 1k): never gzip'd, no Vary");
            ok($r->{body} eq $m->{body}, "$size bytes: the body");
        }
    }
}

# ------------------------------------------------------------------------------------------
# POST

{
    my $u = '/post/a';
    my $g = $t->get($u);
    is(xc($t->get($u)), 'HIT', 'GET cached');
    my $p1 = $t->request('POST', $u, { 'Content-Type' => 'text/plain' }, 'one');
    my $p2 = $t->request('POST', $u, { 'Content-Type' => 'text/plain' }, 'two');
    is(hits($u), 3, 'POST: never answered from cache (both upstream)');
    is_deeply([map { body($_)->{method} } $p1, $p2], ['POST', 'POST'], 'POST: answered by POSTs');
    is_deeply([map { xc($_) } $p1, $p2], ['', ''], 'POST: $throttle_cache_status empty');
    isnt(n_of($p1), n_of($p2), 'POST: two answers');
    my $g2 = $t->get($u);
    ok(xc($g2) eq 'HIT' && $g2->{body} eq $g->{body}, 'GET after (anonymous) POSTs: the GET entry');

    $u = '/post/b';
    $t->request('POST', $u, {}, 'x');
    my $g3 = $t->get($u);
    is(xc($g3), 'MISS', 'GET after a POST to a new URL: MISS (POST stored nothing)');
    is(body($g3)->{method}, 'GET', 'GET body made by a GET');
    is(hits($u), 2, 'both upstream');
}

# ------------------------------------------------------------------------------------------
# TTLs and the stale window (one sleep for all)

{
    my $su = '/stale/x?_delay=500';
    my $s1 = $t->get($su);
    my $s2 = $t->get($su);
    ok(xc($s1) eq 'MISS' && xc($s2) eq 'HIT' && n_of($s1) == n_of($s2), 'stale: MISS then HIT');

    # [name, uri, expired after 1.3 s]
    my @ttl = (
        ['max-age=1',                         '/ttl/ma?_cc=max-age%3D1',                      1],
        ['configured 1s',                     '/short/conf',                                  1],
        ['X-Accel-Expires: 1 over 60s',       '/ttl/xae?_xae=1',                              1],
        ['X-Accel-Expires: 60 over 1s',       '/short/xae?_xae=60',                           0],
        ['X-Accel-Expires: 60 over s-maxage=1', '/ttl/xaesm?_xae=60&_cc=s-maxage%3D1',        0],
        ['s-maxage=1 over max-age=60',        '/ttl/sm?_cc=max-age%3D60,+s-maxage%3D1',       1],
        ['s-maxage=60 over max-age=1',        '/ttl/sm2?_cc=max-age%3D1,+s-maxage%3D60',      0],
        ['max-age=60 over configured 1s',     '/short/ma?_cc=max-age%3D60',                   0],
        ['404 1s',                            '/v404/nf?_status=404',                         1],
    );
    my %first;
    for my $c (@ttl) {
        my ($name, $u) = @$c;
        my $m = $t->get($u);
        my $h = $t->get($u);
        $first{$u} = n_of($m);
        ok(xc($m) eq 'MISS' && xc($h) eq 'HIT' && n_of($h) == n_of($m) && hits($u) == 1,
            "$name: stored (MISS, then HIT)") or diag(xc($m) . ' ' . xc($h) . ' ' . hits($u));
    }
    is($t->get('/v404/nf?_status=404')->{status}, 404, '404 1s: the hit is a 404');

    sleep 1.3;

    for my $c (@ttl) {
        my ($name, $u, $expired) = @$c;
        my $r = $t->get($u);
        if ($expired) {
            ok(xc($r) eq 'MISS' && hits($u) == 2 && n_of($r) != $first{$u},
                "$name: expired after 1.3 s (MISS, upstream)") or diag(xc($r) . ' ' . hits($u));
            my $r2 = $t->get($u);
            ok(xc($r2) eq 'HIT' && n_of($r2) == n_of($r), "$name: stored again");
        } else {
            ok(xc($r) eq 'HIT' && hits($u) == 1 && n_of($r) == $first{$u},
                "$name: still fresh after 1.3 s") or diag(xc($r) . ' ' . hits($u));
        }
    }

    my $hs = $t->request('HEAD', $su);
    ok(xc($hs) eq 'STALE' && $hs->{headers}{'x-app-n'} == n_of($s1), 'stale: HEAD is served the stale entry (STALE)');
    is(hits($su), 1, 'stale: HEAD did not go upstream');
    my @r = $t->concurrent(8, sub { ['GET', $su] });
    is(tally_xc(@r), 'EXPIRED x 1, UPDATING x 7',
        'stale: of 8 at once, one refreshes (EXPIRED), 7 get the stale entry (UPDATING)');
    is(hits($su), 2, 'stale: one upstream request');
    my ($exp) = grep { xc($_) eq 'EXPIRED' } @r;
    my @upd = grep { xc($_) eq 'UPDATING' } @r;
    ok($exp && n_of($exp) > n_of($s1), 'stale: EXPIRED has the new body');
    is(scalar(grep { $_->{body} eq $s1->{body} } @upd), scalar @upd, 'stale: UPDATING have the old body');
    ok(!grep({ ($_->{headers}{age} // 0) < 1 } @upd), 'stale: UPDATING have Age >= 1');
    my $new = $t->get($su);
    ok(xc($new) eq 'HIT' && $exp && $new->{body} eq $exp->{body}, 'stale: then HIT with the new body');
    is(hits($su), 2, 'stale: still two upstream requests');
}

$t->done;
