#!/usr/bin/perl
# Subrequests (auth_request, mirror, SSI includes) are counted: a `throttle` line in a location
# reached only by a subrequest counts against its zone, and each zone counts a client request
# at most once across the main request, its internal redirects and its subrequests (a zone in
# both the main location and the auth_request location: 5r/h admits exactly 5). A rejected
# auth_request subrequest answers 500, as limit_req's does; the README's recipes turn it into
# a 429 with Retry-After (auth_request_set + error_page) or a 403 (throttle_status 403).
# Strict zones decide in Redis inside a subrequest too (auth_request, mirror, SSI includes that
# wait for Redis at the same time), and sync zones count there. The response cache never
# serves or stores a subrequest; under SSI its entry is the upstream's source, so every MISS
# and HIT runs the includes; such an entry is stored plain, never gzip'd (SSI cannot read gzip).
# Bad inputs: a client that leaves while its auth subrequest (or include, or mirror)
# waits for Redis, a Redis that does not answer, 40 includes, nested includes, empty keys.

use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(sleep);
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 2)->need_fds(200);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

$t->write_file('frag/1.txt', 'one');
$t->write_file('frag/2.txt', 'two');
$t->write_file('frag/3.txt', 'three');
$t->write_file('sfrag/1.txt', 'one');
$t->write_file('sfrag/2.txt', 'two');
$t->write_file('sfrag/3.txt', 'three');
$t->write_file('page.html', join '|', map {qq(<!--# include virtual="/frag/$_.txt" -->)} 1 .. 3);
$t->write_file('spage.html', join '|', map {qq(<!--# include virtual="/sfrag/$_.txt" -->)} 1 .. 3);
$t->write_file('both/page.html', join '|', map {qq(<!--# include virtual="/frag/$_.txt" -->)} 1 .. 3);
$t->write_file('many.html', join '', map {qq(<!--# include virtual="/f40/1.txt" -->)} 1 .. 40);
$t->write_file('f40/1.txt', 'x');
$t->write_file('outer.html', 'outer:<!--# include virtual="/inner.html" -->');
$t->write_file('inner.html', 'inner:<!--# include virtual="/frag/1.txt" -->');

$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_redis %%REDIS%% timeout=1s;
    throttle_cache_secret test-secret-0123456789abcdef;

    throttle_zone $http_x_key zone=auth:1m  rate=3r/h;
    throttle_zone $http_x_key zone=rz:1m    rate=2r/h;
    throttle_zone $http_x_key zone=fz:1m    rate=1r/h;
    throttle_zone $http_x_key zone=both:1m  rate=5r/h;
    throttle_zone $http_x_key zone=mir:1m   rate=2r/h;
    throttle_zone $http_x_key zone=mm:1m    rate=3r/h;
    throttle_zone $http_x_key zone=frag:1m  rate=4r/h;
    throttle_zone $http_x_key zone=f40:1m   rate=10r/h;
    throttle_zone $http_x_key zone=ir:1m    rate=3r/h;
    throttle_zone $http_x_key zone=ira:1m   rate=10r/h;
    throttle_zone $http_x_key zone=irb:1m   rate=2r/h;
    throttle_zone $http_x_key zone=atf:1m   rate=2r/h;
    throttle_zone $http_x_key zone=dry:1m   rate=1r/h;
    throttle_zone $http_x_none zone=none:1m rate=1r/h;
    throttle_zone $http_x_key zone=st:1m    rate=5r/h mode=strict;
    throttle_zone $http_x_key zone=sb:1m    rate=3r/h mode=strict;
    throttle_zone $http_x_key zone=sfrag:1m rate=2r/h mode=strict;
    throttle_zone $http_x_key zone=smir:1m  rate=2r/h mode=strict;
    throttle_zone $http_x_key zone=sy:1m    rate=3r/h mode=sync sync=100ms;

    server {
        listen 127.0.0.1:%%PORT%% backlog=1024;
        root %%TESTDIR%%;
        default_type text/plain;
        add_header X-Status $throttle_status always;

        # --- auth_request: the auth location's zone counts; a rejection is a 500
        location /a/ {
            auth_request /auth-a;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /auth-a {
            internal;
            throttle zone=auth;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }

        # --- the README's recipe: a 429 with Retry-After and RateLimit for the client
        location /r/ {
            auth_request /auth-r;
            auth_request_set $auth_status $throttle_status;
            auth_request_set $auth_retry $sent_http_retry_after;
            auth_request_set $auth_ratelimit $sent_http_ratelimit;
            add_header RateLimit $auth_ratelimit always;
            error_page 500 = @limited;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /auth-r {
            internal;
            throttle zone=rz;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location @limited {
            if ($auth_status ~ ^REJECTED) {
                add_header Retry-After $auth_retry always;
                add_header RateLimit $auth_ratelimit always;
                return 429 "slow down\n";
            }
            return 500;
        }

        # --- the other recipe: throttle_status 403, which auth_request passes through
        location /f/ {
            auth_request /auth-f;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /auth-f {
            internal;
            throttle zone=fz;
            throttle_status 403;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }

        # --- one zone in the main location and in the auth location: counted once
        location /b/ {
            throttle zone=both;
            auth_request /auth-b;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /auth-b {
            internal;
            throttle zone=both;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }

        # --- mirror: the mirrored location's zone counts once per client request
        location /m/ {
            mirror /mirror-m;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /mirror-m {
            internal;
            throttle zone=mir;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /mm/ {
            throttle zone=mm;
            mirror /mirror-mm;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /mirror-mm {
            internal;
            throttle zone=mm;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }

        # --- SSI: includes of a limited location
        location ~ \.html$ {
            ssi on;
            default_type text/html;
        }
        location ^~ /both/ {
            ssi on;
            default_type text/html;
            throttle zone=frag;
        }
        location /frag/ { throttle zone=frag; }
        location /f40/  { throttle zone=f40; }

        # --- an internal redirect and a subrequest together
        location /ir/ {
            throttle zone=ir;
            try_files /nonexistent @ir;
        }
        location @ir {
            throttle zone=ir;
            auth_request /auth-ir;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /auth-ir {
            internal;
            throttle zone=ir;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        # a redirect into a location with a zone of its own: that zone counts too
        location /ir2/ {
            throttle zone=ira;
            try_files /nonexistent @ir2;
        }
        location @ir2 {
            throttle zone=ira;
            throttle zone=irb;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        # an internal redirect inside the auth subrequest
        location /atf/ {
            auth_request /auth-atf;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /auth-atf {
            internal;
            throttle zone=atf;
            try_files /nonexistent @auth-atf;
        }
        location @auth-atf {
            throttle zone=atf;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }

        # --- dry run and an empty key in a subrequest
        location /dry/ {
            auth_request /auth-dry;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /auth-dry {
            internal;
            throttle zone=dry;
            throttle_dry_run on;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /none/ {
            auth_request /auth-none;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /auth-none {
            internal;
            throttle zone=none;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }

        # --- strict (Redis decides) and sync zones in subrequests
        location /s/ {
            auth_request /auth-s;
            auth_request_set $auth_status $throttle_status;
            add_header X-Auth-Status $auth_status always;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /auth-s {
            internal;
            throttle zone=st;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /sb/ {
            throttle zone=sb;
            auth_request /auth-sb;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /auth-sb {
            internal;
            throttle zone=sb;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /sfrag/ { throttle zone=sfrag; }
        location /smir/ {
            mirror /mirror-smir;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /mirror-smir {
            internal;
            throttle zone=smir;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /sy/ {
            auth_request /auth-sy;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location = /auth-sy {
            internal;
            throttle zone=sy;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }

        # --- the response cache and subrequests
        location /c/ {
            throttle_cache c;
            throttle_cache_user $cookie_sessionid;
            throttle_cache_valid 200 60s;
            add_header X-Cache $throttle_cache_status always;
            ssi on;
            ssi_types application/json;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /cp/ {
            throttle_cache c;
            throttle_cache_user $cookie_sessionid;
            throttle_cache_valid 200 60s;
            throttle_cache_gzip_min_length 2m;
            add_header X-Cache $throttle_cache_status always;
            ssi on;
            ssi_types application/json;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /cinc/ { proxy_pass http://127.0.0.1:%%APP_PORT%%; }
        location /cm/ {
            mirror /c/mirrored;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
    }
}
EOF

Throttle::Redis::clear_of_window_edge(3600, 60);

sub statuses {
    my ($path, $key, $n) = @_;
    return join ' ', map { $t->get($path, 'X-Key' => $key)->{status} } 1 .. $n;
}

# --- auth_request
is(statuses('/a/x', 'a1', 5), '200 200 200 500 500',
    'auth_request: the auth location counts (3r/h), a rejection is a 500 as with limit_req');
is($app->count('/auth-a'), 3, 'auth_request: the 3 admitted auth subrequests reached the app');
is($app->count('/a/x'), 3, 'auth_request: 3 main requests reached the app');
$t->log_like(qr/limiting request by zone "auth".*subrequest: "\/auth-a"/,
    'auth_request: the rejection is logged with the subrequest');
my $r = $t->get('/a/x', 'X-Key' => 'a2');
is($r->{status}, 200, 'auth_request: another key passes');
ok(!defined $r->{headers}{ratelimit}, 'auth_request: no RateLimit on the main response for a subrequest\'s zone');
is($r->{headers}{'x-status'} // '', '', 'auth_request: $throttle_status of the main request is empty (no zone of its own)');

# --- the recipe: 429, Retry-After, RateLimit
my @r = map { $t->get('/r/x', 'X-Key' => 'r1') } 1 .. 3;
is(join(' ', map { $_->{status} } @r), '200 200 429', 'recipe: 2r/h, then 429 instead of 500');
like($r[0]{headers}{ratelimit} // '', qr/^"rz";r=1;t=\d+$/, 'recipe: RateLimit copied from the subrequest (r=1)');
like($r[1]{headers}{ratelimit} // '', qr/^"rz";r=0;t=\d+$/, 'recipe: RateLimit copied from the subrequest (r=0)');
like($r[2]{headers}{'retry-after'} // '', qr/^\d+$/, 'recipe: Retry-After on the 429');
cmp_ok($r[2]{headers}{'retry-after'} // 0, '>=', 1, 'recipe: Retry-After is at least 1');
is($r[2]{body}, "slow down\n", 'recipe: the named location answered');

is(statuses('/f/x', 'f1', 3), '200 403 403', 'throttle_status 403 in the auth location: the client gets 403');

# --- a zone in both locations: exactly its quota
is(statuses('/b/x', 'b1', 7), '200 200 200 200 200 429 429',
    'main + auth location with one zone (5r/h): exactly 5 pass, counted once each');
is($app->count('/auth-b'), 5, 'main + auth: 5 auth subrequests ran');
$r = $t->get('/b/x', 'X-Key' => 'b2');
like($r->{headers}{ratelimit} // '', qr/^"both";r=4;/, 'main + auth: the main response says 4 left after 1 request');
is($r->{headers}{'x-status'}, 'PASSED', 'main + auth: $throttle_status PASSED');

# --- mirror
@r = map { $t->get('/m/x', 'X-Key' => 'm1') } 1 .. 4;
is(join(' ', map { $_->{status} } @r), '200 200 200 200', 'mirror: the client is not affected by the mirror\'s zone');
ok(Throttle::Redis::wait_for(sub { $app->count('/m/x') == 4 }), 'mirror: 4 main requests reached the app');
Throttle::Redis::wait_for(sub { $app->count('/mirror-m') >= 2 });
sleep 0.3;    # and no more arrive
is($app->count('/mirror-m'), 2, 'mirror: 2 of 4 mirrored subrequests admitted (2r/h)');
$t->log_like(qr/limiting request by zone "mir".*subrequest: "\/mirror-m"/, 'mirror: the rejected mirror is logged');

is(statuses('/mm/x', 'mm1', 5), '200 200 200 429 429', 'main + mirror with one zone (3r/h): 3 pass');
Throttle::Redis::wait_for(sub { $app->count('/mirror-mm') >= 3 });
sleep 0.3;
is($app->count('/mirror-mm'), 3, 'main + mirror: each admitted request mirrored once, counted once');

# --- SSI
my @b = map { $t->get('/page.html', 'X-Key' => 's1')->{body} } 1 .. 5;
is_deeply([@b[0 .. 3]], [('one|two|three') x 4], 'SSI: 4 pages with 3 includes each pass (4r/h: one count per page)');
my @rej = $b[4] =~ /rate limit exceeded in zone \\"frag\\"/g;
is(scalar @rej, 3, 'SSI: the 5th page has its 3 includes rejected (problem+json in the page)');
is($t->get('/page.html', 'X-Key' => 's1')->{status}, 200, 'SSI: the page itself is not limited');

@r = map { $t->get('/both/page.html', 'X-Key' => 's2') } 1 .. 5;
is(join(' ', map { $_->{status} } @r), '200 200 200 200 429',
    'SSI: page and includes in one zone (4r/h): 4 pages, one count each');
is($r[3]{body}, 'one|two|three', 'SSI: the 4th page has its includes');

$r = $t->get('/many.html', 'X-Key' => 's3');
is($r->{body}, 'x' x 40, 'SSI: 40 includes of a limited location (10r/h) all pass');
$t->get('/many.html', 'X-Key' => 's3');
like($t->get('/f40/1.txt', 'X-Key' => 's3')->{headers}{ratelimit} // '', qr/^"f40";r=7;/,
    'SSI: 2 pages of 40 includes counted 2 (then a direct request: 7 left of 10)');

@b = map { $t->get('/outer.html', 'X-Key' => 's4')->{body} } 1 .. 5;
is_deeply([@b[0 .. 3]], [('outer:inner:one') x 4], 'SSI: nested includes, 4 pages (4r/h)');
like($b[4], qr/^outer:inner:\{.*rate limit exceeded/, 'SSI: nested include rejected on the 5th');

# --- internal redirects and subrequests together
is(statuses('/ir/x', 'i1', 5), '200 200 200 429 429',
    'try_files + auth_request, one zone in all three locations (3r/h): 3 pass');
@r = map { $t->get('/ir2/x', 'X-Key' => 'i2') } 1 .. 4;
is(join(' ', map { $_->{status} } @r), '200 200 429 429',
    'a redirect into a location with another zone (2r/h): that zone counts');
like($r[0]{headers}{ratelimit} // '', qr/^"irb";r=1;/, 'redirect: RateLimit names the most restrictive zone');
like($r[2]{headers}{ratelimit} // '', qr/^"irb";r=0;/, 'redirect: and the rejecting one');
is($r[2]{headers}{'x-status'}, 'REJECTED', 'redirect: REJECTED after the redirect');
is(statuses('/atf/x', 'i3', 4), '200 200 500 500', 'try_files inside the auth subrequest (2r/h): counted once');

# --- dry run, empty key
@r = map { $t->get('/dry/x', 'X-Key' => 'd1') } 1 .. 3;
is(join(' ', map { $_->{status} } @r), '200 200 200', 'dry run in the auth subrequest: all pass');
$t->log_like(qr/limiting request, dry run, by zone "dry".*subrequest/, 'dry run in a subrequest is logged');
is(statuses('/none/x', 'n1', 3), '200 200 200', 'an empty key in the auth location: the zone does not apply');

# --- strict: Redis decides inside the auth subrequest
@r = map { $t->get('/s/x', 'X-Key' => 'st1') } 1 .. 7;
is(join(' ', map { $_->{status} } @r), '200 200 200 200 200 500 500', 'strict in auth_request: 5r/h, then 500');
is($r[0]{headers}{'x-auth-status'}, 'PASSED', 'strict in auth_request: $throttle_status of the subrequest');
is($redis->sum(Throttle::Redis::zone_base('st', 'st1') . ':*'), 5, 'strict in auth_request: Redis holds 5');

my @c = $t->concurrent(30, sub { ['GET', '/s/x', { 'X-Key' => 'st2' }] });
is_deeply($t->tally(@c), { 200 => 5, 500 => 25 }, 'strict in auth_request, 30 at once: exactly 5 pass');
is($redis->sum(Throttle::Redis::zone_base('st', 'st2') . ':*'), 5, 'strict in auth_request, 30 at once: Redis holds 5');

is(statuses('/sb/x', 'sb1', 5), '200 200 200 429 429', 'strict zone in main and auth location (3r/h): counted once');
is($redis->sum(Throttle::Redis::zone_base('sb', 'sb1') . ':*'), 3, 'strict in main + auth: Redis holds 3');

$redis->reset_stats;
@b = ($t->get('/spage.html', 'X-Key' => 'sf1')->{body});
is($redis->script_calls, 1, 'strict SSI: one script call for a page of 3 includes');
push @b, map { $t->get('/spage.html', 'X-Key' => 'sf1')->{body} } 2 .. 3;
is_deeply([@b[0 .. 1]], [('one|two|three') x 2],
    'strict SSI: 3 includes wait for Redis together; 2 pages pass (2r/h)');
@rej = $b[2] =~ /rate limit exceeded in zone \\"sfrag\\"/g;
is(scalar @rej, 3, 'strict SSI: the 3rd page has its 3 includes rejected');
is($redis->sum(Throttle::Redis::zone_base('sfrag', 'sf1') . ':*'), 2, 'strict SSI: Redis counted one per page');

@r = map { $t->get('/smir/x', 'X-Key' => 'sm1') } 1 .. 4;
is(join(' ', map { $_->{status} } @r), '200 200 200 200', 'strict mirror: the client is not affected');
ok(Throttle::Redis::wait_for(sub { $redis->sum(Throttle::Redis::zone_base('smir', 'sm1') . ':*') == 2 }), 'strict mirror: Redis holds 2');
Throttle::Redis::wait_for(sub { $app->count('/mirror-smir') >= 2 });
sleep 0.3;
is($app->count('/mirror-smir'), 2, 'strict mirror: 2 mirrored requests admitted');

is(statuses('/sy/x', 'sy1', 5), '200 200 200 500 500', 'sync zone in auth_request: 3r/h');
ok(Throttle::Redis::wait_for(sub { $redis->sum(Throttle::Redis::zone_base('sy', 'sy1') . ':*') == 3 }), 'sync in auth_request: flushed 3 to Redis');

# --- Redis that does not answer; a client that leaves while its subrequest waits
$redis->pause;
$r = $t->get('/s/x', 'X-Key' => 'st3');
is($r->{status}, 200, 'strict in auth_request, Redis paused: the local fallback answers');
is($r->{headers}{'x-auth-status'}, 'PASSED_FALLBACK', 'strict in auth_request, Redis paused: PASSED_FALLBACK');
is($t->get('/spage.html', 'X-Key' => 'sf2')->{body}, 'one|two|three',
    'strict SSI, Redis paused: the includes wait together, then the fallback admits the page');
for my $path ('/s/x', '/spage.html', '/smir/x') {
    for (1 .. 2) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port, Proto => 'tcp') or die;
        print $s "GET $path HTTP/1.1\r\nHost: x\r\nX-Key: st4\r\n\r\n";
        sleep 0.1;
        close $s;
    }
}
sleep 1.5;
$redis->resume;
is($t->get('/s/x', 'X-Key' => 'st5')->{status}, 200, 'after clients left while waiting: nginx answers');
is($t->get('/spage.html', 'X-Key' => 'st5')->{body}, 'one|two|three', 'after clients left while waiting: SSI too');
$t->log_unlike(qr/subrequest: .*logged again|finalize non-active/, 'no request finalized twice');

# --- the response cache: SSI under throttle_cache stores the upstream's source, and every
# response (MISS or HIT) runs its includes; a subrequest never stores nor is served an entry
$app->reset;
my $ssi_cookie = q(sessionid=u1; x=<!--# include virtual='/cinc/x' -->);
my $miss = $t->get('/c/page', Cookie => $ssi_cookie);
my $hit = $t->get('/c/page', Cookie => $ssi_cookie);
is($miss->{headers}{'x-cache'}, 'MISS', 'cache + SSI: MISS');
is($hit->{headers}{'x-cache'}, 'HIT', 'cache + SSI: HIT');
is($app->count('/c/page'), 1, 'cache + SSI: the page reached the app once');
is($app->count('/cinc/x'), 2, 'cache + SSI: the include ran for the MISS and for the HIT');
like($hit->{body}, qr/^\{"n":\d+,"method":"GET","uri":"\/c\/page","cookie":"sessionid=u1; x=\{"n":\d+,"method":"GET","uri":"\/cinc\/x"/,
    'cache + SSI: the HIT went through SSI (the include replaced by its output)');
my @entries = grep { /:e:/ } $redis->keys('throttle:cache:*');
is(scalar @entries, 1, 'cache + SSI: one entry');
like(scalar $redis->cli('GET', $entries[0]), qr/include virtual='\/cinc\/x'/,
    "cache + SSI: the entry holds the upstream's SSI source, not the includes' output");

# a page large enough to be stored gzip'd (3000 bytes, throttle_cache_gzip_min_length 1k in
# /c/): SSI cannot read gzip, so a gzip'd entry would reach gzip clients with its SSI commands
# unprocessed; an entry of a location whose body is rewritten is stored plain (in /cp/ the
# operator also raised throttle_cache_gzip_min_length), and every client gets the includes
for my $big ('/c/page?_size=3000', '/cp/page?_size=3000') {
    $t->get($big, Cookie => $ssi_cookie);
    for my $ae ('gzip', '') {
        $r = $t->get($big, Cookie => $ssi_cookie, 'Accept-Encoding' => $ae);
        is($r->{headers}{'x-cache'}, 'HIT', "cache + SSI, $big, Accept-Encoding '$ae': HIT");
        ok(!defined $r->{headers}{'content-encoding'}, "cache + SSI, $big, Accept-Encoding '$ae': plain");
        like($r->{body}, qr/"cookie":"sessionid=u1; x=\{"n":\d+,"method":"GET","uri":"\/cinc\/x"/,
            "cache + SSI, $big, Accept-Encoding '$ae': the includes ran");
    }
}

# mirror a request into a cached location: the mirrored subrequest goes upstream every time
$app->reset;
my $entries_before = scalar(grep { /:e:/ } $redis->keys('throttle:cache:*'));
$t->get('/cm/x', Cookie => 'sessionid=u2') for 1 .. 3;
ok(Throttle::Redis::wait_for(sub { $app->count('/c/mirrored') == 3 }),
    'mirror into a cached location: every mirrored subrequest reached the app (never a hit)');
is(scalar(grep { /:e:/ } $redis->keys('throttle:cache:*')), $entries_before, 'mirror into a cached location: nothing stored for it');
is($app->count('/cm/x'), 3, 'mirror into a cached location: the main requests went upstream');

$t->done;
