#!/usr/bin/perl
# Response cache invalidation: a user's write (2xx to POST/PUT/PATCH/DELETE) in a location with
# throttle_cache_invalidate, or in the cached location itself, moves that user's generation in
# those namespaces, so their next GET misses while other users keep hitting; non-2xx and
# anonymous writes invalidate nothing. The upstream's X-Throttle-Invalidate header (or the
# name throttle_cache_invalidate_header gives) acts the same and never reaches the client;
# `off` turns both off; invalid names in it are ignored with a warning. Read-your-writes: a GET
# right after the write never sees the pre-write body. throttle_cache_purge invalidates a
# namespace for everyone.

use strict;
use warnings;
use Test::More;
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time);
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 4);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

# timeout=1s: this file is about invalidation logic, not Redis latency (54-cache-redis-failure.t).
$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_redis %%REDIS%% timeout=1s;
    throttle_cache_secret 0123456789abcdef-invalidate;
    throttle_cache_user $cookie_sessionid;
    throttle_cache_valid 60s;

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Cache $throttle_cache_status always;
        add_header X-Worker $pid always;

        location /api/review/    { throttle_cache review;    proxy_pass http://%%APP%%; }
        location /api/analytics/ { throttle_cache analytics; proxy_pass http://%%APP%%; }
        location /api/other/     { throttle_cache other;     proxy_pass http://%%APP%%; }

        location /write/review/  { throttle_cache_invalidate review; proxy_pass http://%%APP%%; }
        location /write/both/    { throttle_cache_invalidate review analytics; proxy_pass http://%%APP%%; }
        location /hdr/           { proxy_pass http://%%APP%%; }
        location /hdr-foo/       { throttle_cache_invalidate_header X-Foo; proxy_pass http://%%APP%%; }
        location /hdr-off/       { throttle_cache_invalidate_header off;
                                   throttle_cache_invalidate review; proxy_pass http://%%APP%%; }

        location /purge          { throttle_cache_purge $arg_ns; }
    }
}
EOF

my %cookie = (A => 'sessionid=alice', B => 'sessionid=bob', anon => undef);

# Every user's requests go over one keep-alive connection of their own (reopened when nginx
# closes it): a write and the GET after it are then handled by one worker, in order. Reads
# after writes over new connections (maybe another worker) are tested on their own below.
my %conn;

sub ka_connect {
    IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port, Proto => 'tcp', Timeout => 5)
        or die "connect: $!";
}

# One request on $$sref (a keep-alive connection; opened when undef, reopened if nginx closed
# it before the request was answered). Responses are read by Content-Length.
sub ka_request {
    my ($sref, $method, $path, $cookie, $body) = @_;
    my $req = "$method $path HTTP/1.1\r\nHost: localhost\r\n";
    $req .= "Cookie: $cookie\r\n" if defined $cookie;
    $req .= 'Content-Length: ' . length($body) . "\r\n" if defined $body;
    $req .= "\r\n" . ($body // '');
    for my $try (1, 2) {
        $$sref //= ka_connect();
        my $s = $$sref;
        my $r = _ka_exchange($s, $req);
        if (($r->{headers}{connection} // '') =~ /close/i) {    # nginx ends the connection
            close $s;
            undef $$sref;
        }
        return $r if $r->{status} || $try == 2 || $r->{error} ne 'closed' || length $r->{raw};
        close $s;
        undef $$sref;
    }
}

sub _ka_exchange {
    my ($s, $req) = @_;
    my $w = syswrite $s, $req;
    return { status => 0, error => 'closed', raw => '' } unless defined $w && $w == length $req;
    my $in = '';
    my $sel = IO::Select->new($s);
    my $deadline = time + 10;
    while (1) {
        my $end = index $in, "\r\n\r\n";
        if ($end >= 0) {
            my ($len) = substr($in, 0, $end) =~ /\r\nContent-Length:\s*(\d+)/i;
            return { status => 0, error => 'no Content-Length', raw => $in } unless defined $len;
            if (length($in) >= $end + 4 + $len) {
                return Throttle::Test::parse_response(substr($in, 0, $end + 4 + $len));
            }
        }
        my $left = $deadline - time;
        return { status => 0, error => 'timeout', raw => $in } if $left <= 0 || !$sel->can_read($left);
        my $n = sysread $s, $in, 65536, length $in;
        return { status => 0, error => 'closed', raw => $in } unless $n;
    }
}

# GET as a user: { status, cache, n, cookie, body, headers, error }
sub fetch {
    my ($user, $path) = @_;
    return summary(ka_request(\$conn{$user}, 'GET', $path, $cookie{$user}));
}

# a write as a user (on the user's connection)
sub write_req {
    my ($user, $method, $path) = @_;
    return ka_request(\$conn{$user}, $method, $path, $cookie{$user}, 'x=1');
}

sub summary {
    my ($r) = @_;
    my $b = Throttle::App::parse_body($r->{body}) // {};
    return { status => $r->{status}, cache => $r->{headers}{'x-cache'} // '', n => $b->{n} // -1,
        cookie => $b->{cookie} // '', body => $r->{body}, headers => $r->{headers},
        error => $r->{error} };
}

sub gets { my ($path) = @_; $app->count(sub { $_[0]{method} eq 'GET' && $_[0]{path} eq $path }) }

# Asserts a response: status 200, X-Cache, the body's n (a number: exactly; \$m: above $m) and
# the cookie the application saw (the user's own).
sub is_resp {
    my ($r, $cache, $n, $user, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $want_cookie = $cookie{$user} // '';
    my $ok = $r->{status} == 200 && $r->{cache} eq $cache && $r->{cookie} eq $want_cookie
        && (ref $n ? $r->{n} > $$n : $r->{n} == $n);
    ok($ok, $name) or diag(sprintf "got status %s X-Cache '%s' n %s cookie '%s'; want 200 %s n %s cookie '%s'%s",
        $r->{status}, $r->{cache}, $r->{n}, $r->{cookie}, $cache, ref $n ? "> $$n" : $n,
        $want_cookie, $r->{error} ? " ($r->{error})" : '');
    return $ok;
}

# Makes sure $user has a cached entry for $path; returns its n.
sub prime {
    my ($user, $path) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $first = fetch($user, $path);
    my $second = fetch($user, $path);
    is_resp($second, 'HIT', $first->{n}, $user, "prime $user $path: cached (n=$first->{n})");
    return $first->{n};
}

my $P = '/api/review/today';
my $Q = '/api/analytics/today';
my $O = '/api/other/today';

# --- A and B cache; A's 2xx POST to a throttle_cache_invalidate location: A misses, B hits
{
    my $a = fetch('A', $P);
    is_resp($a, 'MISS', \0, 'A', 'A: first GET is a MISS');
    my $b = fetch('B', $P);
    is_resp($b, 'MISS', \$a->{n}, 'B', 'B: first GET is a MISS (own entry, own cookie)');
    is(gets($P), 2, 'app saw 2 GETs');
    is_resp(fetch('A', $P), 'HIT', $a->{n}, 'A', 'A: HIT, own body');
    is_resp(fetch('B', $P), 'HIT', $b->{n}, 'B', 'B: HIT, own body');
    is(gets($P), 2, 'hits never reached the app');

    my $w = write_req('A', 'POST', '/write/review/x');
    is($w->{status}, 200, 'A POSTs to /write/review/ (throttle_cache_invalidate review): 200');
    is($w->{headers}{'x-cache'} // '', '', 'X-Cache is empty for POST');
    my $a2 = fetch('A', $P);
    is_resp($a2, 'MISS', \$a->{n}, 'A', 'A after the write: MISS with a new body');
    is(gets($P), 3, 'app count +1');
    is_resp(fetch('A', $P), 'HIT', $a2->{n}, 'A', 'A: the new body is cached');
    is_resp(fetch('B', $P), 'HIT', $b->{n}, 'B', 'B after A\'s write: still HIT, B\'s old body');
    is(gets($P), 3, 'app count unchanged');
}

# --- non-2xx writes invalidate nothing
for my $status (400, 500) {
    my $n = prime('A', $P);
    my $before = gets($P);
    my $w = write_req('A', 'POST', "/write/review/x?_status=$status");
    is($w->{status}, $status, "POST answered $status by the app");
    is_resp(fetch('A', $P), 'HIT', $n, 'A', "after a $status POST A still HITs (nothing invalidated)");
    is(gets($P), $before, "$status: app count unchanged");
}
{
    my $n = prime('A', $P);
    my $w = write_req('A', 'PUT', '/write/review/x?_status=404&_inv=review');
    is($w->{status}, 404, 'PUT answered 404 with X-Throttle-Invalidate: review');
    ok(!exists $w->{headers}{'x-throttle-invalidate'}, 'the header is removed on a non-2xx too');
    is_resp(fetch('A', $P), 'HIT', $n, 'A', 'a non-2xx with the header invalidates nothing');
}

# --- other write methods (2xx) invalidate too
for my $method (qw(PUT PATCH DELETE)) {
    my $n = prime('A', $P);
    is(write_req('A', $method, '/write/review/x')->{status}, 200, "$method 200");
    is_resp(fetch('A', $P), 'MISS', \$n, 'A', "$method invalidates: MISS, new body");
}

# --- a POST in the cached location itself invalidates its namespace for that user
{
    my $na = prime('A', $P);
    my $nb = prime('B', $P);
    my $no = prime('A', $O);
    my $before = gets($P);
    my $w = write_req('A', 'POST', $P);
    is($w->{status}, 200, 'A POSTs to the cached location itself');
    is($w->{headers}{'x-cache'} // '', '', 'POST: X-Cache empty (no lookup)');
    is(Throttle::App::parse_body($w->{body})->{method}, 'POST', 'the POST reached the app');
    my $a = fetch('A', $P);
    is_resp($a, 'MISS', \$na, 'A', 'A: review invalidated by the POST there');
    is(gets($P), $before + 1, 'app count +1');
    is_resp(fetch('B', $P), 'HIT', $nb, 'B', 'B: still HIT');
    is_resp(fetch('A', $O), 'HIT', $no, 'A', 'A: another namespace still HIT');
}

# --- several namespaces at once
{
    my $nr = prime('A', $P);
    my $nq = prime('A', $Q);
    my $no = prime('A', $O);
    my $br = prime('B', $P);
    my $bq = prime('B', $Q);
    is(write_req('A', 'POST', '/write/both/x')->{status}, 200,
        'A POSTs to throttle_cache_invalidate review analytics');
    is_resp(fetch('A', $P), 'MISS', \$nr, 'A', 'review invalidated');
    is_resp(fetch('A', $Q), 'MISS', \$nq, 'A', 'analytics invalidated');
    is_resp(fetch('A', $O), 'HIT', $no, 'A', 'other: still HIT');
    is_resp(fetch('B', $P), 'HIT', $br, 'B', 'B review: still HIT');
    is_resp(fetch('B', $Q), 'HIT', $bq, 'B', 'B analytics: still HIT');
}

# --- an anonymous write invalidates nothing (not even the anonymous entries)
{
    my $na = prime('A', $P);
    my $nn = prime('anon', $P);
    my $before = gets($P);
    my $w = write_req('anon', 'POST', '/write/both/x');
    is($w->{status}, 200, 'anonymous POST answered 200');
    my $w2 = write_req('anon', 'POST', "$P?_inv=review");
    is($w2->{status}, 200, 'anonymous POST in the cached location, with the header, answered 200');
    ok(!exists $w2->{headers}{'x-throttle-invalidate'}, 'header removed for anonymous too');
    is_resp(fetch('anon', $P), 'HIT', $nn, 'anon', 'anonymous entry still HIT');
    is_resp(fetch('A', $P), 'HIT', $na, 'A', 'A still HIT');
    is(gets($P), $before, 'app count unchanged');
}

# --- the upstream's X-Throttle-Invalidate header, on a GET and on a POST
for my $method ('GET', 'POST') {
    my $na = prime('A', $P);
    my $nq = prime('A', $Q);
    my $nb = prime('B', $P);
    my $r = write_req('A', $method, '/hdr/x?_inv=review');
    is($r->{status}, 200, "$method /hdr/ with X-Throttle-Invalidate: review: 200");
    ok(!exists $r->{headers}{'x-throttle-invalidate'}, "$method: the header never reaches the client")
        or diag $r->{raw};
    is_resp(fetch('A', $P), 'MISS', \$na, 'A', "$method + header: A's review entries are gone");
    is_resp(fetch('A', $Q), 'HIT', $nq, 'A', "$method + header: A's analytics still HIT");
    is_resp(fetch('B', $P), 'HIT', $nb, 'B', "$method + header: B still HIT");
}
{
    # a GET in the cached location whose response carries the header: removed, and it acts
    my $nq = prime('A', $Q);
    my $r = fetch('A', "$Q?_inv=analytics%2Creview");
    is($r->{status}, 200, 'GET in a cached location with the header');
    ok(!exists $r->{headers}{'x-throttle-invalidate'}, 'removed there too');
    is_resp(fetch('A', $Q), 'MISS', \$nq, 'A', 'comma-separated list: analytics invalidated');
}

# --- throttle_cache_invalidate_header X-Foo: that name acts and is removed; the default does not
{
    my $na = prime('A', $P);
    my $r = write_req('A', 'POST', '/hdr-foo/x?_inv=review');
    is($r->{status}, 200, 'POST /hdr-foo/ with X-Throttle-Invalidate (not the configured name)');
    is($r->{headers}{'x-throttle-invalidate'}, 'review', 'the default name passes through there');
    is_resp(fetch('A', $P), 'HIT', $na, 'A', 'and invalidates nothing');
    $r = write_req('A', 'POST', '/hdr-foo/x?_hdr=X-Foo%3A%20review');
    is($r->{status}, 200, 'POST /hdr-foo/ with X-Foo: review');
    ok(!exists $r->{headers}{'x-foo'}, 'X-Foo never reaches the client') or diag $r->{raw};
    is_resp(fetch('A', $P), 'MISS', \$na, 'A', 'X-Foo: review invalidated');
}

# --- throttle_cache_invalidate_header off: neither removed nor acted on
{
    my $na = prime('A', $P);
    my $r = write_req('A', 'GET', '/hdr-off/x?_inv=review');
    is($r->{status}, 200, 'GET /hdr-off/ with X-Throttle-Invalidate: review');
    is($r->{headers}{'x-throttle-invalidate'}, 'review', 'off: the header reaches the client');
    is_resp(fetch('A', $P), 'HIT', $na, 'A', 'off: nothing invalidated');
}

# --- invalid namespaces in the header are ignored (warned), valid ones still act
{
    my $na = prime('A', $P);
    my $nq = prime('A', $Q);
    my $no = prime('A', $O);
    my $mark = $t->log_mark;
    my $long = 'x' x 65;
    my $r = write_req('A', 'POST', "/hdr/x?_inv=bad%21ns%2C%20review%20bad%2Fns%2C$long");
    is($r->{status}, 200, 'POST with X-Throttle-Invalidate: bad!ns, review bad/ns,xxx..(65)');
    ok(!exists $r->{headers}{'x-throttle-invalidate'}, 'removed');
    is_resp(fetch('A', $P), 'MISS', \$na, 'A', 'the valid name in the list acted');
    is_resp(fetch('A', $Q), 'HIT', $nq, 'A', 'analytics untouched');
    is_resp(fetch('A', $O), 'HIT', $no, 'A', 'other untouched');
    my @w = $t->log_lines(qr/\[warn\].*invalid namespace/, $mark);
    is(scalar(grep { /"bad!ns"/ } @w), 1, 'warned about "bad!ns"');
    is(scalar(grep { /"bad\/ns"/ } @w), 1, 'warned about "bad/ns"');
    is(scalar(grep { /"$long"/ } @w), 1, 'warned about the 65-byte name');
    is(scalar(grep { /"review"/ } @w), 0, 'no warning about "review"') or diag join "\n", @w;
}

# --- read-your-writes: a GET right after a 2xx write never shows the pre-write body
{
    my $s;
    my ($bad, $fail) = (0, '');
    for my $i (1 .. 20) {
        my $g1 = summary(ka_request(\$s, 'GET', $P, $cookie{A}));
        my $g2 = summary(ka_request(\$s, 'GET', $P, $cookie{A}));
        my $w = ka_request(\$s, 'POST', '/write/review/x', $cookie{A}, "i=$i");
        my $g3 = summary(ka_request(\$s, 'GET', $P, $cookie{A}));
        my $ok = $g1->{status} == 200 && $g2->{cache} eq 'HIT' && $g2->{n} == $g1->{n}
            && $w->{status} == 200 && $g3->{status} == 200 && $g3->{cache} eq 'MISS'
            && $g3->{n} > $g2->{n} && $g3->{cookie} eq $cookie{A};
        unless ($ok) {
            $bad++;
            $fail ||= "round $i: GET $g1->{status} $g1->{cache} n=$g1->{n}; GET $g2->{cache} n=$g2->{n}; "
                . "POST $w->{status}; GET $g3->{status} $g3->{cache} n=$g3->{n}";
        }
    }
    close $s if $s;
    is($bad, 0, 'one keep-alive connection, 20 x (GET, GET HIT, POST, GET): the GET after the write is a MISS with a new body')
        or diag $fail;
}
{
    # The same over separate connections, as a client with a connection pool would: the GET
    # goes over a connection opened before the POST (often accepted by another worker than the
    # POST's), sent as soon as the POST's answer is read. 300 rounds.
    my ($bad, @fail) = (0);
    for my $i (1 .. 300) {
        my ($ws, $gs);
        my $g = summary(ka_request(\$gs, 'GET', $P, $cookie{A}));
        $g = summary(ka_request(\$gs, 'GET', $P, $cookie{A})) if $g->{cache} ne 'HIT';
        close $gs;
        undef $gs;
        $gs = ka_connect();
        my $w = ka_request(\$ws, 'POST', '/write/review/x', $cookie{A}, "i=$i");
        my $g2 = summary(ka_request(\$gs, 'GET', $P, $cookie{A}));
        close $_ for grep { defined } $ws, $gs;
        unless ($g->{cache} eq 'HIT' && $w->{status} == 200 && $g2->{status} == 200
            && $g2->{cache} eq 'MISS' && $g2->{n} > $g->{n})
        {
            $bad++;
            push @fail, "round $i: GET $g->{cache} n=$g->{n}; POST $w->{status} (worker "
                . ($w->{headers}{'x-worker'} // '?') . "); GET right after: $g2->{status} $g2->{cache} "
                . "n=$g2->{n} (worker " . ($g2->{headers}{'x-worker'} // '?') . ')' if @fail < 5;
        }
    }
    is($bad, 0, 'separate connections, 300 x (GET HIT, POST, GET): the GET after the write never shows the pre-write body')
        or diag join "\n", "$bad of 300 reads right after a write were served the pre-write entry:", @fail;
}

# --- operator purge
{
    my $ar = prime('A', $P);
    my $br = prime('B', $P);
    my $nr = prime('anon', $P);
    my $aq = prime('A', $Q);
    my $bq = prime('B', $Q);
    my $before = gets($P);

    my $r = $t->request('POST', '/purge?ns=review');
    is($r->{status}, 200, 'POST /purge?ns=review: 200');
    like($r->{headers}{'content-type'} // '', qr{^application/json}, 'JSON');
    like($r->{body}, qr/^\{"namespace":"review","generation":(\d+)\}\n?$/, 'body names the namespace and generation')
        or diag $r->{body};
    my ($g1) = $r->{body} =~ /"generation":(\d+)/;
    is_resp(fetch('A', $P), 'MISS', \$ar, 'A', 'purge: A review MISS');
    is_resp(fetch('B', $P), 'MISS', \$br, 'B', 'purge: B review MISS');
    is_resp(fetch('anon', $P), 'MISS', \$nr, 'anon', 'purge: anonymous review MISS');
    is(gets($P), $before + 3, 'purge: 3 GETs reached the app');
    is_resp(fetch('A', $Q), 'HIT', $aq, 'A', 'purge: A analytics still HIT');
    is_resp(fetch('B', $Q), 'HIT', $bq, 'B', 'purge: B analytics still HIT');

    $r = $t->request('POST', '/purge?ns=review');
    my ($g2) = ($r->{body} // '') =~ /"generation":(\d+)/;
    ok(defined $g1 && defined $g2 && $g2 > $g1, "a second purge moves the generation on ($g1 -> " . ($g2 // '?') . ')');

    is($t->get('/purge?ns=review')->{status}, 405, 'GET /purge: 405');
    is($t->request('PUT', '/purge?ns=review', {}, 'x')->{status}, 405, 'PUT /purge: 405');
    for my $bad ('bad%21ns', '', 'x' x 65, 'a%2Fb') {
        my $b = $t->request('POST', "/purge?ns=$bad");
        is($b->{status}, 400, "ns='" . (length $bad > 20 ? substr($bad, 0, 8) . '...' : $bad) . "': 400")
            or diag $b->{raw};
    }
    like($t->request('POST', '/purge?ns=bad"x')->{body}, qr/^\{"error":"invalid namespace","namespace":"bad"\}/,
        'a 400 never echoes a quote into the JSON');

    my $aq2 = $aq;
    $r = $t->request('PURGE', '/purge?ns=analytics');
    is($r->{status}, 200, 'PURGE /purge?ns=analytics: 200');
    like($r->{body}, qr/^\{"namespace":"analytics","generation":\d+\}/, 'PURGE: JSON');
    is_resp(fetch('A', $Q), 'MISS', \$aq2, 'A', 'PURGE: A analytics MISS');
    is_resp(fetch('B', $Q), 'MISS', \$bq, 'B', 'PURGE: B analytics MISS');
    $r = $t->request('DELETE', '/purge?ns=other');
    is($r->{status}, 200, 'DELETE /purge?ns=other: 200');
}

is(scalar($t->worker_pids), 4, 'all workers alive');
$t->log_unlike(qr/exited on signal/, 'no worker crashed');
$t->done;
