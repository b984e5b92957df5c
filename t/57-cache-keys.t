#!/usr/bin/perl
# What makes two requests the same cache entry, beyond the path and query (one worker, real
# Redis, the counting Throttle::App upstream): the scheme and host a request was sent to (two
# servers inherit one namespace from http{}; absolute-form targets; Host spellings nginx
# normalises; the port is not) and what throttle_cache_key adds; a GET or HEAD with a request
# body is never cached; an identity cookie or header sent more than once is never cached,
# whoever would win it; and many distinct huge identities do not grow the worker (its identity
# memo keeps digests, not identities).

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 1);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

# https on a third port, when openssl and curl are here to make a certificate and speak TLS.
my $dir = $t->testdir;
my $tls = !system("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
    . "-keyout $dir/tls.key -out $dir/tls.crt -days 2 -subj /CN=a.test >/dev/null 2>&1")
    && !system('curl --version >/dev/null 2>&1');
my $https = $tls
    ? "listen 127.0.0.1:%%PORT_3%% ssl; ssl_certificate $dir/tls.crt; ssl_certificate_key $dir/tls.key;"
    : '';

# The namespace and the identity are set at http level: every server shares them.
my $conf = <<'EOF';
http {
    throttle_redis %%REDIS%% timeout=1s;
    throttle_cache_secret keys-secret-0123456789abcdef;
    throttle_cache keys;
    throttle_cache_user $cookie_sessionid;
    throttle_cache_valid 200 60s;
    add_header X-Cache $throttle_cache_status always;
    proxy_http_version 1.1;
    large_client_header_buffers 4 64k;

    server {
        listen 127.0.0.1:%%PORT%%;
        listen 127.0.0.1:%%PORT_2%%;
        %%HTTPS%%
        server_name a.test;

        location / {
            proxy_pass http://%%APP%%;
        }
        location /tok/ {
            throttle_cache_user $http_x_token;
            proxy_pass http://%%APP%%;
        }
        location /mix/ {
            throttle_cache_user "$cookie_sessionid:${http_x_tenant}";
            proxy_pass http://%%APP%%;
        }
        location /memo/ {
            empty_gif;
        }
        location /lang/ {
            throttle_cache_key $http_accept_language;
            proxy_pass http://%%APP%%;
        }
        location /split/ {
            throttle_cache_key $server_port;
            proxy_pass http://%%APP%%;
        }
    }
    server {
        listen 127.0.0.1:%%PORT%%;
        server_name b.test;

        location / {
            proxy_pass http://%%APP%%;
        }
    }
}
EOF
$conf =~ s/%%HTTPS%%/$https/;
$t->write_conf($redis->fill($conf))->run;

sub xc   { $_[0]{headers}{'x-cache'} // '' }
sub body { Throttle::App::parse_body($_[0]{body}) // {} }
sub n_of { body($_[0])->{n} // -1 }
sub path_hits { my ($p) = @_; $app->count(sub { $_[0]{path} eq $p }) }
sub host_get { my ($host, $path, @h) = @_; $t->request('GET', $path, [Host => $host, @h]) }

# ------------------------------------------------------------------------------------------
# The host is in the key

{
    my $p = '/h/x';
    my $a = host_get('a.test', $p);
    my $b = host_get('b.test', $p);
    is(xc($a), 'MISS', 'Host: a.test: MISS');
    ok(xc($b) eq 'MISS' && n_of($b) != n_of($a), 'Host: b.test: MISS, its own answer (not a.test\'s)')
        or diag('b.test got ' . xc($b) . ' n=' . n_of($b) . ' (a.test n=' . n_of($a) . ')');
    is(path_hits($p), 2, 'both hosts reached the application');
    is($app->last_request($p)->{headers}{host}, '127.0.0.1:' . $app->port, 'proxied as usual');

    my $a2 = host_get('a.test', $p);
    my $b2 = host_get('b.test', $p);
    ok(xc($a2) eq 'HIT' && n_of($a2) == n_of($a), 'a.test again: HIT, a.test\'s entry');
    ok(xc($b2) eq 'HIT' && n_of($b2) == n_of($b), 'b.test again: HIT, b.test\'s entry');

    # Spellings nginx resolves to the same host ($host): case, one trailing dot, the Host's port.
    for my $h ('B.TEST', 'b.test.', 'b.test:1234', 'B.Test.:8080') {
        my $r = host_get($h, $p);
        ok(xc($r) eq 'HIT' && n_of($r) == n_of($b), "Host: $h: HIT, b.test's entry")
            or diag(xc($r) . ' n=' . n_of($r));
    }
    is(path_hits($p), 2, 'no more upstream requests');

    # The absolute-form target's host wins over the Host header, as nginx routes it.
    my $q = '/h/abs';
    my $ha = host_get('a.test', $q);
    my $abs = $t->request('GET', "http://b.test$q", [Host => 'a.test']);
    ok(xc($ha) eq 'MISS' && xc($abs) eq 'MISS' && n_of($abs) != n_of($ha),
        'GET http://b.test/... with Host: a.test: MISS, not a.test\'s entry')
        or diag('absolute form got ' . xc($abs));
    my $hb = host_get('b.test', $q);
    ok(xc($hb) eq 'HIT' && n_of($hb) == n_of($abs), 'then Host: b.test: HIT, the absolute-form request\'s entry');
    my $abs2 = $t->request('GET', "http://A.TEST.$q", [Host => 'b.test']);
    ok(xc($abs2) eq 'HIT' && n_of($abs2) == n_of($ha), 'GET http://A.TEST./... with Host: b.test: a.test\'s entry');

    # No Host at all (HTTP/1.0): $host is the server's name.
    my $nh = '/h/nohost';
    my $r10 = $t->request(undef, undef, undef, undef, raw => "GET $nh HTTP/1.0\r\n\r\n");
    my $ra = host_get('a.test', $nh);
    ok(xc($r10) eq 'MISS' && xc($ra) eq 'HIT' && n_of($ra) == n_of($r10),
        'HTTP/1.0 without Host (default server a.test), then Host: a.test: one entry')
        or diag(xc($r10) . ' ' . xc($ra));

    # An unknown host is served by the default server, under its own name.
    my $rc = host_get('c.test', $nh);
    ok(xc($rc) eq 'MISS' && n_of($rc) != n_of($r10), 'Host: c.test (default server): its own entry');
}

# ------------------------------------------------------------------------------------------
# The scheme is in the key

SKIP: {
    skip 'no openssl or curl: no https', 2 unless $tls;
    my $p = '/sch/x';
    my $http = host_get('a.test', $p);
    my $port = $t->port(3);
    my $get = sub {
        my $out = `curl -sk --max-time 10 -D - -o /dev/null --resolve a.test:$port:127.0.0.1 https://a.test:$port$p`;
        my ($xc) = $out =~ /^X-Cache: (\S+)/mi;
        my ($n) = $out =~ /^X-App-N: (\d+)/mi;
        return ($xc // '', $n // -1);
    };
    my ($xc1, $n1) = $get->();
    my ($xc2, $n2) = $get->();
    ok(xc($http) eq 'MISS' && $xc1 eq 'MISS' && $n1 != n_of($http), 'https: MISS, not the http entry')
        or diag(xc($http) . " then https $xc1");
    ok($xc2 eq 'HIT' && $n2 == $n1, 'https again: HIT, the https entry') or diag($xc2);
}

# ------------------------------------------------------------------------------------------
# No port is in the key: hosts and instances listening on different ports share entries

{
    my $p = '/port/x';
    my $r1 = host_get('a.test', $p);
    my $r2 = $t->request('GET', $p, [Host => 'a.test'], undef, port => $t->port(2));
    my $r3 = $t->request('GET', $p, [Host => 'a.test:' . $t->port(2)], undef, port => $t->port(2));
    ok(xc($r1) eq 'MISS' && xc($r2) eq 'HIT' && n_of($r2) == n_of($r1),
        'the same host on another listening port: the same entry')
        or diag(xc($r1) . ' ' . xc($r2));
    ok(xc($r3) eq 'HIT' && n_of($r3) == n_of($r1), 'whatever the Host\'s port');
}

# ------------------------------------------------------------------------------------------
# throttle_cache_key: what else the answer varies on

{
    my $p = '/lang/x';
    my $en = $t->get($p, 'Accept-Language' => 'en');
    my $fr = $t->get($p, 'Accept-Language' => 'fr');
    my $none = $t->get($p);
    my $en2 = $t->get($p, 'Accept-Language' => 'en');
    my $fr2 = $t->get($p, 'Accept-Language' => 'fr');
    ok(xc($en) eq 'MISS' && xc($fr) eq 'MISS' && xc($none) eq 'MISS',
        'throttle_cache_key $http_accept_language: en, fr and none are three entries')
        or diag(join ' ', map { xc($_) } $en, $fr, $none);
    ok(xc($en2) eq 'HIT' && n_of($en2) == n_of($en) && xc($fr2) eq 'HIT' && n_of($fr2) == n_of($fr),
        'each language hits its own entry');
    is(path_hits($p), 3, 'three upstream requests');

    # The key holds Accept-Language: an answer that varies on it may be stored.
    my $v = '/lang/vary?_vary=Accept-Language';
    my $v1 = $t->get($v, 'Accept-Language' => 'en');
    my $v2 = $t->get($v, 'Accept-Language' => 'en');
    my $v3 = $t->get($v, 'Accept-Language' => 'fr');
    ok(xc($v1) eq 'MISS' && xc($v2) eq 'HIT' && n_of($v2) == n_of($v1) && xc($v3) eq 'MISS',
        'Vary: Accept-Language under throttle_cache_key $http_accept_language: stored per language')
        or diag(join ' ', map { xc($_) } $v1, $v2, $v3);
    # Origin is not in the key: a variant per Origin (t/62-cache-vary.t).
    my $o = '/lang/other?_vary=Accept-Language,Origin';
    my @o = map { $t->get($o, 'Accept-Language' => 'en', Origin => $_) } qw(a a b);
    is(path_hits('/lang/other'), 2, 'Vary: Accept-Language, Origin: one entry per Origin');
    ok(xc($o[1]) eq 'HIT' && n_of($o[1]) == n_of($o[0]) && xc($o[2]) eq 'MISS',
        'the same Origin hits, another misses') or diag(join ' ', map { xc($_) } @o);

    # A header the key reads, sent twice: which one would the application use?
    my $twice = $t->request('GET', $p, ['Accept-Language' => 'en', 'Accept-Language' => 'fr']);
    ok(xc($twice) eq 'BYPASS' && n_of($twice) != n_of($en), 'Accept-Language twice: BYPASS, not the en entry')
        or diag(xc($twice));

    my $q = '/split/x';
    my $r1 = host_get('a.test', $q);
    my $r2 = $t->request('GET', $q, [Host => 'a.test'], undef, port => $t->port(2));
    my $r3 = host_get('a.test', $q);
    ok(xc($r1) eq 'MISS' && xc($r2) eq 'MISS' && xc($r3) eq 'HIT' && n_of($r3) == n_of($r1),
        'throttle_cache_key $server_port: one entry per listening port')
        or diag(join ' ', map { xc($_) } $r1, $r2, $r3);

    my ($ok, $out) = $t->nginx_t(<<'EOF');
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { throttle_cache_key $http_a; throttle_cache_key $http_b; }
    }
}
EOF
    ok(!$ok && $out =~ /"throttle_cache_key" directive is duplicate/, 'throttle_cache_key twice: refused')
        or diag($out);
}

# ------------------------------------------------------------------------------------------
# A GET or HEAD with a request body is never cached

{
    my $p = '/gb/x';
    my $one = $t->request('GET', $p, [], 'one');
    my $two = $t->request('GET', $p, [], 'two');
    ok(xc($one) eq 'BYPASS' && $one->{status} == 200, 'GET with a body: BYPASS') or diag(xc($one));
    ok(xc($two) eq 'BYPASS' && n_of($two) != n_of($one), 'GET with another body: BYPASS, its own answer')
        or diag(xc($two) . ' n=' . n_of($two) . ' first n=' . n_of($one));
    is(path_hits($p), 2, 'both reached the application');
    is($app->last_request($p)->{body}, 'two', 'with their body');

    my $none = $t->get($p);
    ok(xc($none) eq 'MISS' && n_of($none) != n_of($two), 'GET without a body: MISS (a body stored nothing)')
        or diag(xc($none));
    my $hit = $t->get($p);
    ok(xc($hit) eq 'HIT' && n_of($hit) == n_of($none), 'then HIT');
    my $three = $t->request('GET', $p, [], 'three');
    ok(xc($three) eq 'BYPASS' && n_of($three) != n_of($none), 'a cached URL, GET with a body: BYPASS, not the entry')
        or diag(xc($three));
    my $ch = $t->request('GET', $p, ['Transfer-Encoding' => 'chunked'], "3\r\nabc\r\n0\r\n\r\n");
    ok(xc($ch) eq 'BYPASS' && n_of($ch) != n_of($none), 'GET with a chunked body: BYPASS') or diag(xc($ch));
    is($app->last_request($p)->{body}, 'abc', 'with its body');
    my $hd = $t->request('HEAD', $p, [], 'x');
    is(xc($hd), 'BYPASS', 'HEAD with a body: BYPASS');
    is(path_hits($p), 6, 'every request with a body reached the application');

    my $z = '/gb/empty';
    my $z1 = $t->request('GET', $z, ['Content-Length' => 0], '');
    my $z2 = $t->request('GET', $z, ['Content-Length' => 0], '');
    ok(xc($z1) eq 'MISS' && xc($z2) eq 'HIT' && n_of($z2) == n_of($z1), 'Content-Length: 0 is no body: MISS, HIT');
}

# ------------------------------------------------------------------------------------------
# An identity sent more than once is never cached

{
    my $p = '/ck/1';
    my $b = $t->get($p, Cookie => 'sessionid=B');
    ok(xc($b) eq 'MISS' && body($b)->{cookie} eq 'sessionid=B', 'sessionid=B: MISS, stored under B');
    ok(xc($t->get($p, Cookie => 'sessionid=B')) eq 'HIT', 'sessionid=B again: HIT');

    # [name, [Cookie header values]]: nginx's $cookie_sessionid is B, an application may read A.
    my @ambiguous = (
        ['B then A',               ['sessionid=B; sessionid=A']],
        ['no space',               ['sessionid=B;sessionid=A']],
        ['two Cookie headers',     ['sessionid=B', 'sessionid=A']],
        ['three, among others',    ['x=1; sessionid=B', 'y=2', 'z=3; sessionid=A; w=4']],
        ['A in another case',      ['sessionid=B; SESSIONID=A']],
        ['space before =',         ['sessionid=B; sessionid =A']],
        ['comma separated',        ['sessionid=B, sessionid=A']],
        ['the same value twice',   ['sessionid=B; sessionid=B']],
    );
    for my $c (@ambiguous) {
        my ($name, $cookies) = @$c;
        my $before = path_hits($p);
        my $r = $t->request('GET', $p, [map { (Cookie => $_) } @$cookies]);
        ok(xc($r) eq 'BYPASS' && path_hits($p) == $before + 1 && body($r)->{cookie} eq join('; ', @$cookies),
            "$name: BYPASS, upstream, its own answer")
            or diag(xc($r) . ' n=' . n_of($r) . ' (B\'s n=' . n_of($b) . ')');
    }

    # Names that only contain the identity cookie's name are other cookies.
    for my $c ('sessionid=B; xsessionid=A', 'sessionidx=A; sessionid=B', 'a=sessionid; sessionid=B') {
        my $r = $t->get($p, Cookie => $c);
        ok(xc($r) eq 'HIT' && n_of($r) == n_of($b), "$c: one sessionid, HIT, B's entry") or diag(xc($r));
    }

    # An ambiguous request stores nothing.
    my $q = '/ck/2';
    my $amb = $t->get($q, Cookie => 'sessionid=B; sessionid=A');
    my $bq = $t->get($q, Cookie => 'sessionid=B');
    ok(xc($amb) eq 'BYPASS' && xc($bq) eq 'MISS' && n_of($bq) != n_of($amb),
        'an ambiguous request first, then sessionid=B: MISS, B\'s own answer')
        or diag(xc($amb) . ' ' . xc($bq));

    # A header identity ($http_x_token) sent twice.
    my $tp = '/tok/1';
    my $t1 = $t->get($tp, 'X-Token' => 'T1');
    my $tt = $t->request('GET', $tp, ['X-Token' => 'T1', 'X-Token' => 'T2']);
    ok(xc($t1) eq 'MISS' && xc($tt) eq 'BYPASS' && n_of($tt) != n_of($t1), 'X-Token twice: BYPASS')
        or diag(xc($t1) . ' ' . xc($tt));
    my $tx = $t->request('GET', $tp, ['X-Token' => 'T1', 'X-Other' => 'T2']);
    ok(xc($tx) eq 'HIT' && n_of($tx) == n_of($t1), 'X-Token once among other headers: HIT');
    my $tc = $t->request('GET', $tp, ['X-Token' => 'T1', Cookie => 'sessionid=B; sessionid=A']);
    ok(xc($tc) eq 'HIT' && n_of($tc) == n_of($t1), 'a repeated cookie the identity does not read: HIT')
        or diag(xc($tc));

    # Every $cookie_ and $http_ variable of a composite identity is checked.
    my $mp = '/mix/1';
    my $m1 = $t->get($mp, Cookie => 'sessionid=B', 'X-Tenant' => 't1');
    my $m2 = $t->request('GET', $mp, [Cookie => 'sessionid=B', 'X-Tenant' => 't1', 'X-Tenant' => 't2']);
    my $m3 = $t->request('GET', $mp, [Cookie => 'sessionid=B; sessionid=A', 'X-Tenant' => 't1']);
    my $m4 = $t->get($mp, Cookie => 'sessionid=B', 'X-Tenant' => 't1');
    ok(xc($m1) eq 'MISS' && xc($m2) eq 'BYPASS' && xc($m3) eq 'BYPASS', 'composite identity: a repeated part bypasses')
        or diag(join ' ', map { xc($_) } $m1, $m2, $m3);
    ok(xc($m4) eq 'HIT' && n_of($m4) == n_of($m1), 'composite identity: unambiguous, HIT');
}

# ------------------------------------------------------------------------------------------
# Many distinct huge identities: the worker keeps digests, not identities

{
    my ($pid) = $t->worker_pids;
    my $rss = sub {
        open my $fh, '<', "/proc/$pid/status" or return -1;
        while (<$fh>) { return $1 if /^VmRSS:\s+(\d+)\s+kB/ }
        return -1;
    };
    my $big = 'x' x 60000;
    my $send = sub {
        my ($from, $to) = @_;
        my $ok = 0;
        for my $i ($from .. $to) {
            my $r = $t->get('/memo/x', Cookie => "sessionid=$i$big");
            $ok++ if $r->{status} == 200;
        }
        return $ok;
    };
    is($send->(1, 50), 50, '50 requests with a distinct 60 KB sessionid each: 200');
    my $before = $rss->();
    is($send->(51, 450), 400, '400 more: 200');
    my $after = $rss->();
    my $grew = $after - $before;
    diag("worker VmRSS: $before kB before, $after kB after 400 distinct 60 KB identities");
    SKIP: {
        # make asan: AddressSanitizer keeps freed memory in its quarantine (256 MB), so the
        # worker's RSS measures the quarantine, not what the module retains.
        skip 'RSS under AddressSanitizer measures its quarantine', 1 if $ENV{TEST_NGINX_PRELOAD};
        ok($before > 0 && $grew < 6 * 1024,
            "400 distinct 60 KB identities (24 MB) grew the worker by less than 6 MB ($grew kB)");
    }
}

$t->done;
