#!/usr/bin/perl
# Verified identity from a session (throttle_identity): the application is asked once per
# credential, through an internal subrequest, who a session cookie belongs to; the answer is
# kept in shared memory (all workers) and Redis (other hosts, restarts) under HMAC(secret,
# credential), and $throttle_user_id keys the user zone. An invented cookie is anonymous (the
# anonymous zone counts it, the user zone does not); two sessions of one user share its quota;
# negative answers are kept briefly; the application's forget header drops a resolution; Redis
# down leaves shared memory; a reload keeps the store; concurrent requests with one new
# credential make one resolve call. Hostile answers and credentials make the request anonymous.

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 1)->need_fds(200);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

my $conf = <<'EOF';
http {
    throttle_redis %%REDIS%% timeout=200ms;
    throttle_cache_secret test-secret-0123456789abcdef;
    throttle_identity $cookie_sessionid resolve=/_identity zone=ids:SIZE ttl=5m negative_ttl=2s
                      timeout=1s;

    map $throttle_user_id $anon_key {
        ""      $remote_addr;
        default "";
    }
    throttle_zone $anon_key         zone=anon:1m  rate=100000r/h;
    throttle_zone $throttle_user_id zone=user:1m  rate=3r/h;
    throttle_zone $remote_addr      zone=tiny:1m  rate=1r/h;

    large_client_header_buffers 4 32k;
    proxy_buffer_size 4k;

    server {
        listen 127.0.0.1:%%PORT%%;
        throttle_identity_resolve on;

        location / {
            throttle zone=anon;
            throttle zone=user;
            add_header X-Uid "[$throttle_user_id]" always;
            add_header X-Forget "[$upstream_http_x_throttle_forget]" always;
            proxy_pass http://%%APP%%;
        }
        location /redir/ {
            rewrite ^ /api/redirected last;
        }
        location /lookup-only/ {
            throttle_identity_resolve off;
            add_header X-Uid "[$throttle_user_id]" always;
            proxy_pass http://%%APP%%;
        }
        # The module's question: counted by no zone (tiny would reject the second one), never
        # re-entered (it carries the same cookie).
        location = /_identity {
            internal;
            throttle zone=tiny;
            throttle zone=user;
            proxy_pass http://%%APP%%/_resolve?_delay=300;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
    }
}
EOF
(my $conf1 = $conf) =~ s/SIZE/1m/;
$t->write_conf($redis->fill($conf1))->run;

sub resolves { $app->count('/_resolve') }
sub uid {
    my ($cookie, $path) = @_;
    my $r = $t->get($path // '/api/x', $cookie ? (Cookie => "sessionid=$cookie") : ());
    my ($u) = ($r->{headers}{'x-uid'} // '') =~ /^\[(.*)\]$/;
    return wantarray ? ($u, $r) : $u;
}

# No cookie: anonymous, the application is not asked.
is(uid(undef), '', 'no credential: anonymous');
is(resolves(), 0, 'no credential: nobody asked');

# An invented cookie: asked once, anonymous, kept (negative_ttl).
is(uid('invented.1'), '', 'invented cookie: anonymous');
is(uid('invented.1'), '', 'invented cookie again: anonymous');
is(resolves(), 1, 'invented cookie: asked once');
is(uid('invented.1', '/lookup-only/x'), '', 'anonymous where the store is only read');

# A user: asked once, its zone counts the user across its sessions.
my ($u, $r) = uid('u42.a');
is($u, '42', 'session of user 42 resolves');
is($r->{status}, 200, 'user 42 first request passes');
is(uid('u42.a'), '42', 'second request: from the store');
is(resolves(), 2, 'one resolve call per credential');
is(uid('u42.a', '/lookup-only/x'), '42', 'a location that only reads the store sees it');
is($t->get('/api/x', Cookie => 'sessionid=u42.a')->{status}, 200, 'third request of user 42');
is($t->get('/api/x', Cookie => 'sessionid=u42.a')->{status}, 429, 'fourth: user zone (3r/h)');
is($t->get('/api/x', Cookie => 'sessionid=u42.b')->{status}, 429,
    'another session of user 42 shares the quota');
is(resolves(), 3, 'the second session was asked once');
for (1 .. 5) {
    is($t->get('/api/x', Cookie => "sessionid=invented.$_")->{status}, 200,
        "invented cookie $_ is in the anonymous zone, not the user zone");
}

# The resolve subrequest was not counted (tiny: 1r/h) and the app got the cookie.
like($app->last_request('/_resolve')->{cookie}, qr/sessionid=invented\.5/, 'cookie forwarded');
is(uid('u77.z'), '77', 'a later resolution is not limited by the resolve location');

# Redis holds digests, never the session key.
my @keys = $redis->keys('*identity*');
ok(@keys >= 3, 'resolutions in Redis') or diag "@keys";
ok(!(grep {/u42|invented|u77/} $redis->keys('*')), 'no session key in a Redis key name');
my ($k42) = grep { ($redis->get($_) // '') eq 'u:42' } @keys;
like($k42 // '', qr/^throttle:identity:\{ids:[0-9a-f]{64}\}$/, 'key layout');
my $ttl = $redis->cli('PTTL', $k42 // 'none');
ok($ttl > 200_000 && $ttl <= 300_000, "user resolution kept ttl=5m ($ttl ms)");

# Internal redirect: resolved once for the request.
my $before = resolves();
is(uid('u44.r', '/redir/y'), '44', 'resolved across an internal redirect');
is(resolves(), $before + 1, 'once');

# Negative caching ends: the invented cookie is asked again after negative_ttl.
$before = resolves();
ok(Throttle::Redis::wait_for(sub { uid('invented.1'); resolves() > $before }, timeout => 15),
    'after negative_ttl the credential is asked again');

# Forget: the application names a credential on its response; the header is not sent on.
is(uid('u43.f'), '43', 'user 43');
$before = resolves();
is(uid('u43.f'), '43', 'user 43 from the store');
$r = $t->get('/logout?_hdr=X-Throttle-Forget:u43.f', Cookie => 'sessionid=u43.f');
ok(!exists $r->{headers}{'x-throttle-forget'}, 'forget header stripped from the response');
my $k43 = grep { ($redis->get($_) // '') eq 'u:43' } $redis->keys('*identity*');
is($k43, 0, 'forgotten in Redis');
is(uid('u43.f'), '43', 'asked again after forget');
is(resolves(), $before + 1, 'one more resolve call after forget');

# Hostile answers: anonymous, not kept (asked again), logged once.
my $mark = $t->log_mark;
for my $c (qw(e500 big ctl sp two u huge close)) {
    $before = resolves();
    is(uid("$c.h"), '', "$c: anonymous");
    is(uid("$c.h"), '', "$c: anonymous again");
    is(resolves(), $before + 2, "$c: not kept");
}
my @bad = $t->log_lines(qr/invalid X-User-Id|X-User-Id more than once/, $mark);
is(scalar @bad, 1, 'refused X-User-Id logged once') or diag explain \@bad;
my @fail = $t->log_lines(qr/throttle_identity: "\/_identity" answered 500/, $mark);
is(scalar @fail, 1, 'failure logged once');
is(uid('u1.ok'), '1', 'a good answer after the failures');
ok($t->log_lines(qr/answers again/, $mark), 'recovery logged');
$t->allow(qr/upstream prematurely closed|upstream sent too big header|throttle_identity:/);

# The cookie twice: nginx reads the first, Django the last: anonymous, nobody asked.
$before = resolves();
$r = $t->get('/api/x', Cookie => 'sessionid=u90.first; sessionid=u91.last');
is($r->{headers}{'x-uid'}, '[]', 'session cookie sent twice: anonymous');
is(resolves(), $before, 'not asked for the ambiguous request');
is(uid('u90.first'), '90', 'the same cookie alone resolves');
# Credentials: 10 KB, odd bytes.
is(uid('u5.' . ('x' x 10240)), '5', '10 KB credential resolves');
is(uid("u6.\x01\xff\x7f%"), '6', 'credential with odd bytes resolves');

# Slow application: timeout, anonymous; the late answer is kept.
# (The leader's response is sent at the timeout; its connection stays open until the
# background subrequest ends, so the two requests are sent at once.)
$before = resolves();
my @slow = $t->concurrent(2, sub { ['GET', '/api/s', { Cookie => 'sessionid=slow.s' }] });
is(join(',', map { $_->{headers}{'x-uid'} // 'none' } @slow), '[],[]',
    'slow resolve: anonymous after the timeout, the waiting request too');
is(resolves(), $before + 1, 'asked once');
ok(Throttle::Redis::wait_for(sub { uid('slow.s') eq '7' }, timeout => 15), 'late answer kept');
is(resolves(), $before + 1, 'slow credential asked once');

# Coalescing: concurrent requests with one new credential, one resolve call.
$before = resolves();
my @rs = $t->concurrent(20, sub { ['GET', '/api/c', { Cookie => 'sessionid=u50.c' }] });
is(scalar(grep { ($_->{headers}{'x-uid'} // '') eq '[50]' } @rs), 20, 'all 20 resolved');
is(resolves(), $before + 1, 'one resolve call for 20 concurrent requests');

# A reload keeps the store (same zone); a new zone is filled from Redis.
$before = resolves();
ok($t->reload, 'reload');
is(uid('u77.z'), '77', 'after reload: from the store');
is(resolves(), $before, 'not asked after reload');
(my $conf2 = $conf) =~ s/SIZE/2m/;
$t->write_conf($redis->fill($conf2));
ok($t->reload, 'reload with another store size');
is(uid('u77.z'), '77', 'new store: from Redis');
is(resolves(), $before, 'not asked: Redis had it');

# Redis down: shared memory still answers; new credentials are asked without waiting for it.
$redis->kill;
$t->allow(qr/redis|Redis/);
is(uid('u77.z'), '77', 'Redis down: from shared memory');
is(uid('u46.d'), '46', 'Redis down: a new credential resolves');
$before = resolves();
is(uid('u46.d'), '46', 'Redis down: kept in shared memory');
is(resolves(), $before, 'not asked again');

# Configurations that must fail nginx -t, with nginx-style messages.
my $ok_server = 'server { listen 127.0.0.1:%%PORT%%; location / { return 204; } }';
for my $case (
    ['throttle_identity $cookie_s resolve=/_i zone=ids:1m;',
        qr/"throttle_identity" in .* needs a secret: set "throttle_cache_secret"/],
    ['throttle_cache_secret test-secret-0123456789abcdef; throttle_identity_resolve on;',
        qr/"throttle_identity_resolve" requires "throttle_identity"/],
    ['throttle_cache_secret test-secret-0123456789abcdef; throttle_identity $cookie_s resolve=/_i;',
        qr/"throttle_identity" must have "zone" parameter/],
    ['throttle_cache_secret test-secret-0123456789abcdef; throttle_identity $cookie_s zone=i:1m;',
        qr/"throttle_identity" must have "resolve" parameter/],
    ['throttle_cache_secret test-secret-0123456789abcdef;'
            . ' throttle_identity $cookie_s resolve=/_i zone=ids:1m ttl=0;',
        qr/invalid ttl "ttl=0"/],
    ['throttle_cache_secret test-secret-0123456789abcdef;'
            . ' throttle_identity $cookie_s resolve=_i zone=ids:1m;',
        qr/invalid resolve URI "resolve=_i"/],
    ['throttle_cache_secret test-secret-0123456789abcdef;'
            . ' throttle_identity $cookie_s resolve=/_i zone=ids:1m forget_header=a:b;',
        qr/invalid header name "forget_header=a:b"/],
    ['throttle_cache_secret test-secret-0123456789abcdef;'
            . ' throttle_identity $cookie_s resolve=/_i zone=ids:1m colour=red;',
        qr/invalid parameter "colour=red"/],
    ['throttle_cache_secret test-secret-0123456789abcdef;'
            . ' throttle_zone $remote_addr zone=ids:1m rate=1r/s;'
            . ' throttle_identity $cookie_s resolve=/_i zone=ids:1m;',
        qr/shared memory zone "ids" is already declared for a different use/],
    ['throttle_cache_secret test-secret-0123456789abcdef;'
            . ' throttle_identity $cookie_s resolve=/_i zone=ids:1m;'
            . ' throttle_identity $cookie_t resolve=/_i zone=ids2:1m;',
        qr/"throttle_identity" directive is duplicate/],
) {
    my ($ok, $out) = $t->nginx_t("http {\n$case->[0]\n$ok_server\n}\n");
    ok(!$ok, "nginx -t refuses: $case->[0]");
    like($out, $case->[1], 'with its message') or diag $out;
}

$t->done;
