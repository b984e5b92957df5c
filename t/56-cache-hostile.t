#!/usr/bin/perl
# Hostile and unusual client input against a cached location (4 workers, real Redis, the
# counting Throttle::App upstream): Range requests on hits and misses; conditional requests
# (If-None-Match, If-Modified-Since, If-Match, If-Range) on hits and misses; odd identity
# cookies (4 KB, UTF-8, binary bytes, several Cookie headers, an empty sessionid); odd query
# strings (500 arguments, duplicates, %00, invalid escapes, +, 6 KB); odd paths (dot segments,
# double slashes, encoded slashes, fragments) with and without a rewrite; other methods, HEAD,
# HTTP/1.0 and HTTP/0.9 clients; pipelined keep-alive requests of several users; clients that
# close in the middle of a 1 MB hit or while their lookup or fill is pending; GETs with a
# request body (never cached). Always: no 5xx from the cache, every body belongs to the request
# (and user) that asked, the application's counts show what was and was not cached, and no
# worker crashes (teardown: no alert/crit/emerg, no "exited on signal").

use strict;
use warnings;
use Test::More;
use IO::Select;
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_LINGER);
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
    throttle_cache_secret hostile-secret-0123456789abcdef;
    add_header X-Cache $throttle_cache_status always;
    proxy_http_version 1.1;

    server {
        listen 127.0.0.1:%%PORT%% backlog=1024;
        server_name localhost;  # the host of HTTP/1.0 and 0.9 requests without Host (the key's)
        throttle_cache hostile;
        throttle_cache_user $cookie_sessionid;
        throttle_cache_valid 200 60s;

        location / {
            proxy_pass http://%%APP%%;
        }
        location /frange/ {
            proxy_force_ranges on;
            proxy_pass http://%%APP%%;
        }
        location /anyv/ {
            throttle_cache_valid any 60s;
            proxy_pass http://%%APP%%;
        }
        location /rw/ {
            rewrite ^/rw/(.*)$ /rwd/$1 break;
            proxy_pass http://%%APP%%;
        }
    }
}
EOF

sub xc   { $_[0]{headers}{'x-cache'} // '' }
sub body { Throttle::App::parse_body($_[0]{body}) // {} }
sub n_of { body($_[0])->{n} // -1 }
sub uri_hits { my ($uri) = @_; $app->count(sub { $_[0]{uri} eq $uri }) }
sub path_hits { my ($p) = @_; $app->count(sub { $_[0]{path} eq $p }) }
sub raw_req { $t->request(undef, undef, undef, undef, raw => $_[0], timeout => $_[1] // 10) }
sub printable {
    my ($s) = @_;
    $s = substr($s, 0, 120) . '...(' . length($s) . ' bytes)' if length $s > 140;
    $s =~ s/([^\x20-\x7e])/sprintf '\\x%02x', ord $1/ge;
    return $s;
}
# The documented cache key of a raw request uri, as a string: path, then the query's
# arguments (split at "&", name up to the first "="), stably sorted by name.
sub canon_query {
    my ($u) = @_;
    my ($path, $q) = split /\?/, $u, 2;
    my @a = defined $q && length $q ? split(/&/, $q, -1) : ();
    my @k = map { [/^([^=]*)/ ? $1 : '', $_, scalar @a] } @a;
    $k[$_][2] = $_ for 0 .. $#k;
    return join "\0", $path, map { $_->[1] } sort { $a->[0] cmp $b->[0] || $a->[2] <=> $b->[2] } @k;
}
sub sid_of {    # the sessionid a cookie header value (as the application saw it) carries
    my ($c) = @_;
    return $c =~ /(?:^|;\s*)sessionid=([^;]*)/ ? $1 : undef;
}

# The responses of one connection, parsed in order from a byte stream (keep-alive, pipelined).
# $methods: the request methods, in order (HEAD responses have no body).
sub parse_stream {
    my ($in, $methods) = @_;
    my @out;
    for my $m (@$methods) {
        my $end = index $in, "\r\n\r\n";
        last if $end < 0;
        my $head = substr $in, 0, $end + 4;
        my ($status) = $head =~ m{^HTTP/\d\.\d (\d{3})} or last;
        my %h;
        for (split /\r\n/, substr($head, 0, $end)) {
            my ($k, $v) = /^([^:]+):\s*(.*?)\s*$/ or next;
            $h{ lc $k } = exists $h{ lc $k } ? "$h{lc $k}, $v" : $v;
        }
        my $rest = substr $in, $end + 4;
        my $body = '';
        if ($m eq 'HEAD' || $status == 304 || $status == 204) {
        } elsif (($h{'transfer-encoding'} // '') =~ /chunked/i) {
            my $done = 0;
            while ($rest =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
                my $len = hex $1;
                if ($len == 0) { $rest =~ s/^\r\n// or last; $done = 1; last }
                last if length $rest < $len + 2;
                $body .= substr $rest, 0, $len, '';
                $rest =~ s/^\r\n//;
            }
            last unless $done;
        } elsif (defined $h{'content-length'}) {
            last if length $rest < $h{'content-length'};
            $body = substr $rest, 0, $h{'content-length'}, '';
        } else {
            $body = $rest;    # until the connection closed
            $rest = '';
        }
        push @out, { status => $status, headers => \%h, body => $body, raw => $head };
        $in = $rest;
    }
    return (\@out, $in);
}

# Writes @$reqs in ONE write on one connection, reads until the server closes (the last
# request says Connection: close) or the deadline; returns the parsed responses.
sub pipeline {
    my ($reqs, $methods, $timeout) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port, Proto => 'tcp',
        Timeout => 5) or die "connect: $!";
    my $all = join '', @$reqs;
    my $w = syswrite $s, $all;
    die "short write" unless $w == length $all;
    my $in = '';
    my $sel = IO::Select->new($s);
    my $deadline = time + ($timeout // 10);
    while (1) {
        my $left = $deadline - time;
        last if $left <= 0 || !$sel->can_read($left);
        my $n = sysread $s, $in, 65536, length $in;
        last unless $n;
    }
    close $s;
    my ($got, $left) = parse_stream($in, $methods);
    return wantarray ? ($got, $left, $in) : $got;
}

sub req_text {
    my ($method, $path, $headers, $body, $close) = @_;
    my $r = "$method $path HTTP/1.1\r\nHost: localhost\r\n";
    my @h = @{ $headers // [] };
    for (my $i = 0; $i < @h; $i += 2) { $r .= "$h[$i]: $h[$i + 1]\r\n" }
    $r .= 'Content-Length: ' . length($body) . "\r\n"
        if defined $body && !grep { /^(?:content-length|transfer-encoding)$/i } @h;
    $r .= "Connection: close\r\n" if $close;
    return $r . "\r\n" . ($body // '');
}

# ------------------------------------------------------------------------------------------
# Range requests

{
    my $u = '/range/a?_size=100';
    my $m = $t->get($u);
    my $full = $m->{body};
    is(length $full, 100, 'range: the miss has the whole 100-byte body');
    my $h = $t->get($u);
    ok(xc($m) eq 'MISS' && xc($h) eq 'HIT' && $h->{body} eq $full, 'range: MISS, then HIT');

    for my $c (
        ['bytes=0-9',    0,  10],
        ['bytes=-5',     95, 5],
        ['bytes=90-',    90, 10],
        ['bytes=95-500', 95, 5],
        ['bytes=0-0',    0,  1],
        ['bytes=0-99',   0,  100],
    ) {
        my ($range, $off, $len) = @$c;
        my $r = $t->get($u, Range => $range);
        my $last = $off + $len - 1;
        ok($r->{status} == 206 && xc($r) eq 'HIT', "HIT + Range: $range: 206 HIT")
            or diag("got $r->{status} " . xc($r));
        is($r->{headers}{'content-range'} // '', "bytes $off-$last/100", "Range: $range: Content-Range");
        is($r->{body}, substr($full, $off, $len), "Range: $range: exactly those bytes of the cached body");
        is($r->{headers}{'content-length'} // '', $len, "Range: $range: Content-Length $len");
    }

    # multiple ranges: multipart/byteranges
    {
        my $r = $t->get($u, Range => 'bytes=0-4,10-14,-3');
        is($r->{status}, 206, 'multiple ranges on a HIT: 206');
        my ($boundary) = ($r->{headers}{'content-type'} // '') =~ m{^multipart/byteranges;\s*boundary=(\S+)};
        ok(defined $boundary, 'multiple ranges: multipart/byteranges')
            or diag("Content-Type: " . ($r->{headers}{'content-type'} // ''));
        my @parts;
        if (defined $boundary) {
            my $rb = $r->{body};
            while ($rb =~ /\r\n--\Q$boundary\E\r\n(.*?)\r\n\r\n(.*?)(?=\r\n--\Q$boundary\E)/gs) {
                my ($ph, $pb) = ($1, $2);
                push @parts, [$ph =~ m{Content-Range: bytes (\d+)-(\d+)/100} ? ($1, $2) : ('?', '?'), $pb];
            }
            $rb =~ /\r\n--\Q$boundary\E--\r\n\z/ or push @parts, 'no closing boundary';
        }
        is_deeply(\@parts, [[0, 4, substr($full, 0, 5)], [10, 14, substr($full, 10, 5)],
            [97, 99, substr($full, 97, 3)]], 'multiple ranges: the three parts, the cached bytes')
            or diag(printable($r->{body}));
        is($r->{headers}{'content-length'} // -1, length $r->{body}, 'multiple ranges: Content-Length');
    }

    # invalid or unsatisfiable: 416 or the full 200, as nginx's range filter decides
    for my $range ('bytes=200-300', 'bytes=abc', 'bytes=5-2', 'bytes=0-99999999999999999999999',
        'bytes=', 'items=0-9', 'bytes=-0', 'bytes=--1', 'bytes=0-4,' . join(',', map { "$_-$_" } 5 .. 400))
    {
        my $r = $t->get($u, Range => $range);
        my $name = 'HIT + invalid Range ' . printable(length $range > 40 ? substr($range, 0, 40) . '...' : $range);
        if ($r->{status} == 200) {
            ok($r->{body} eq $full, "$name: 200 with the whole cached body");
        } elsif ($r->{status} == 416) {
            ok(($r->{headers}{'content-range'} // '') eq 'bytes */100' && index($r->{body}, $full) < 0,
                "$name: 416, Content-Range bytes */100, no cached body");
        } elsif ($r->{status} == 206 && $range =~ /^bytes=0-4,/) {
            ok(index($r->{body}, substr($full, 0, 5)) >= 0, "$name: 206 (many ranges)");
        } else {
            fail("$name: status $r->{status} (want 200 or 416)");
        }
        ok($r->{status} < 500, "$name: no 5xx");
    }
    is(uri_hits($u), 1, 'range: every Range request was answered from the cache (one upstream request)');

    # Range on a MISS passes to upstream; the app ignores Range; the full 200 is stored
    my $mu = '/range/miss?_size=100';
    my $rm = $t->get($mu, Range => 'bytes=0-9');
    ok($rm->{status} == 200 && xc($rm) eq 'MISS' && length($rm->{body}) == 100,
        'MISS + Range: 200 with the full body from upstream (no proxy_force_ranges)')
        or diag("$rm->{status} " . xc($rm) . ' ' . length $rm->{body});
    like($app->last_request(sub { $_[0]{uri} eq $mu })->{headers}{range} // '', qr/^bytes=0-9$/,
        'MISS + Range: the Range header went upstream');
    my $rh = $t->get($mu);
    ok($rh->{status} == 200 && xc($rh) eq 'HIT' && $rh->{body} eq $rm->{body},
        'after a Range MISS: plain GET is a HIT with the full 100 bytes');
    my $rr = $t->get($mu, Range => 'bytes=10-19');
    ok($rr->{status} == 206 && $rr->{body} eq substr($rm->{body}, 10, 10), 'then Range on it: 206, the bytes');
    is(uri_hits($mu), 1, 'MISS + Range: one upstream request');

    # proxy_force_ranges: nginx slices the MISS; the cache must not store the slice
    my $fu = '/frange/a?_size=100';
    my $f1 = $t->get($fu, Range => 'bytes=0-9');
    ok($f1->{status} == 206 && length($f1->{body}) == 10, 'proxy_force_ranges MISS + Range: 206 (10 bytes)')
        or diag("$f1->{status} " . length $f1->{body});
    my $f2 = $t->get($fu);
    ok($f2->{status} == 200 && length($f2->{body}) == 100 && body($f2)->{pattern_ok}
        && (body($f2)->{uri} // '') eq $fu,
        'then plain GET: 200 with the whole 100-byte body (never the stored slice)')
        or diag("$f2->{status} " . xc($f2) . ' ' . printable($f2->{body}));
    diag('proxy_force_ranges: a Range MISS ' . (xc($f2) eq 'HIT' ? 'stored the full body' : 'stored nothing'));
    my $f3 = $t->get($fu, Range => 'bytes=-5');
    ok($f3->{status} == 206 && $f3->{body} eq substr($f2->{body}, 95, 5), 'then Range again: the right bytes');

    # an upstream 206 (and 304) is never stored, even under throttle_cache_valid any
    for my $s (206, 304) {
        my $su = "/anyv/s$s?_status=$s&_size=100";
        my @r = map { $t->get($su, Range => 'bytes=0-9') } 1 .. 2;
        is_deeply([map { $_->{status} } @r], [$s, $s], "upstream $s: passed on");
        is(uri_hits($su), 2, "upstream $s: never stored (both upstream)");
        my $g = $t->get("/anyv/s$s?_status=$s&_size=100");
        is(xc($g), 'MISS', "upstream $s: a plain GET after it still misses");
    }

    # Range on a gzip-stored HIT: slices of the representation the client gets
    my $gu = '/range/gz?_size=5000';
    my $gm = $t->get($gu);
    my $gz = $t->get($gu, 'Accept-Encoding' => 'gzip');
    is($gz->{headers}{'content-encoding'} // '', 'gzip', 'gzip HIT: stored gzip\'d');
    my $gr = $t->get($gu, 'Accept-Encoding' => 'gzip', Range => 'bytes=0-9');
    ok($gr->{status} == 206 && $gr->{body} eq substr($gz->{body}, 0, 10)
        && ($gr->{headers}{'content-encoding'} // '') eq 'gzip',
        'gzip HIT + Range (gzip client): 206, bytes of the gzip\'d body');
    my $pr = $t->get($gu, Range => 'bytes=4990-');
    ok($pr->{status} == 206 && $pr->{body} eq substr($gm->{body}, 4990),
        'gzip HIT + Range (plain client): 206, bytes of the plain body');
    is(uri_hits($gu), 1, 'gzip range: one upstream request');
}

# ------------------------------------------------------------------------------------------
# Conditional requests

{
    my $u = '/cond/e?_etag=v1&_size=300';
    my $m = $t->get($u);
    my $h = $t->get($u);
    ok(xc($m) eq 'MISS' && xc($h) eq 'HIT', 'ETag entry: MISS, HIT');
    is($h->{headers}{etag} // '', '"v1"', 'HIT carries the stored ETag');

    for my $c (['"v1"', 304], ['W/"v1"', 304], ['*', 304], ['"v0", "v1"', 304],
        ['"v2"', 200], ['v1', 200], ['"V1"', 200]) {
        my ($inm, $want) = @$c;
        my $r = $t->get($u, 'If-None-Match' => $inm);
        is("$r->{status} " . xc($r), "$want HIT", "HIT + If-None-Match: $inm -> $want");
        if ($want == 304) {
            is($r->{body}, '', "If-None-Match: $inm: no body");
            unlike($r->{raw}, qr/\r\n\r\n.+/s, "If-None-Match: $inm: nothing after the header");
        } else {
            is($r->{body}, $m->{body}, "If-None-Match: $inm: the full cached body");
        }
    }
    my $hd = $t->request('HEAD', $u, { 'If-None-Match' => '"v1"' });
    is("$hd->{status} " . xc($hd), '304 HIT', 'HEAD + If-None-Match on a HIT: 304');

    my $im = $t->get($u, 'If-Match' => '"nope"');
    is("$im->{status} " . xc($im), '412 HIT', 'HIT + If-Match: "nope" -> 412');
    is($im->{body} =~ /"n":/ ? 'leaked' : '', '', '412: not the cached body');
    my $im2 = $t->get($u, 'If-Match' => '"v1"');
    ok($im2->{status} == 200 && $im2->{body} eq $m->{body}, 'HIT + If-Match: "v1" -> 200, the body');

    my $ir = $t->get($u, 'If-Range' => '"v1"', Range => 'bytes=0-9');
    ok($ir->{status} == 206 && $ir->{body} eq substr($m->{body}, 0, 10), 'HIT + If-Range "v1" + Range: 206');
    my $ir2 = $t->get($u, 'If-Range' => '"v0"', Range => 'bytes=0-9');
    ok($ir2->{status} == 200 && $ir2->{body} eq $m->{body}, 'HIT + If-Range "v0" + Range: 200 full');
    is(uri_hits($u), 1, 'conditional (ETag): everything answered from the cache');

    my $lm = 1700000000;
    my $lmdate = 'Tue, 14 Nov 2023 22:13:20 GMT';
    my $lu = "/cond/lm?_lm=$lm";
    my $lm1 = $t->get($lu);
    my $lm2 = $t->get($lu);
    ok(xc($lm1) eq 'MISS' && xc($lm2) eq 'HIT', 'Last-Modified entry: MISS, HIT');
    is($lm2->{headers}{'last-modified'} // '', $lmdate, 'HIT carries the stored Last-Modified');
    my $c1 = $t->get($lu, 'If-Modified-Since' => $lmdate);
    is("$c1->{status} " . xc($c1), '304 HIT', 'HIT + If-Modified-Since (exact) -> 304');
    is($c1->{body}, '', 'If-Modified-Since 304: no body');
    my $c2 = $t->get($lu, 'If-Modified-Since' => 'Mon, 13 Nov 2023 22:13:20 GMT');
    ok($c2->{status} == 200 && $c2->{body} eq $lm1->{body}, 'HIT + If-Modified-Since (older) -> 200 full');
    my $c3 = $t->get($lu, 'If-Modified-Since' => 'garbage');
    ok($c3->{status} == 200 && $c3->{body} eq $lm1->{body}, 'HIT + If-Modified-Since (garbage) -> 200 full');
    my $c4 = $t->get($lu, 'If-Unmodified-Since' => 'Mon, 13 Nov 2023 22:13:20 GMT');
    is("$c4->{status} " . xc($c4), '412 HIT', 'HIT + If-Unmodified-Since (older) -> 412');
    is(uri_hits($lu), 1, 'conditional (Last-Modified): everything answered from the cache');

    # a conditional MISS: the upstream's 304 is passed on and not stored. It does not take the
    # fill lock, so it cannot tell whether anyone fills: it goes upstream at once instead of
    # waiting throttle_cache_lock_timeout (5 s) for a fill nobody makes.
    my $cu = '/cond/miss?_etag=v1';
    my $cmark = $t->log_mark;
    my $x1 = $t->get($cu, 'If-None-Match' => '"v1"');
    is("$x1->{status} " . xc($x1), '304 MISS', 'MISS + If-None-Match: the upstream\'s 304');
    my @cwaited = $t->log_lines(qr/waited \d+ ms for another request/, $cmark);
    is(scalar @cwaited, 0, sprintf('MISS + If-None-Match: it did not wait for a fill (%.0f ms)',
        1000 * $x1->{elapsed})) or diag join "\n", @cwaited;
    my $x2 = $t->get($cu);
    ok($x2->{status} == 200 && xc($x2) eq 'MISS' && (body($x2)->{uri} // '') eq $cu,
        'then plain GET: MISS (the 304 was not stored), full 200 body')
        or diag("$x2->{status} " . xc($x2) . ' ' . printable($x2->{body}));
    my $x3 = $t->get($cu, 'If-None-Match' => '"v1"');
    is("$x3->{status} " . xc($x3), '304 HIT', 'then If-None-Match: 304 from the cache');
    my $x4 = $t->get($cu);
    ok($x4->{status} == 200 && $x4->{body} eq $x2->{body}, 'and plain GET: the stored body');
    is(uri_hits($cu), 2, 'conditional MISS: two upstream requests');
}

# ------------------------------------------------------------------------------------------
# Identity cookies

{
    my $p = '/ck/x';
    my $L = 'L' x 4096;
    # [name, [Cookie header values], identity nginx should key on (undef: BYPASS)]
    my @cases = (
        ['4 KB cookie A',            ["sessionid=${L}A"],                     "${L}A"],
        ['4 KB cookie B',            ["sessionid=${L}B"],                     "${L}B"],
        ['UTF-8 cookie 1',           ["sessionid=\xc3\xa9t\xc3\xa9"],         "\xc3\xa9t\xc3\xa9"],
        ['UTF-8 cookie 2',           ["sessionid=\xc3\xa9t\xc3\xa8"],         "\xc3\xa9t\xc3\xa8"],
        ['binary cookie 1',          ["sessionid=\x01\x7f\x80\xfe\xffz"],     "\x01\x7f\x80\xfe\xffz"],
        ['binary cookie 2',          ["sessionid=\x01\x7f\x80\xfe\xffy"],     "\x01\x7f\x80\xfe\xffy"],
        ['two Cookie headers',       ['a=1', 'sessionid=multi'],              'multi'],
        ['one header, same user',    ['sessionid=multi'],                     'multi'],
        ['two headers, other user',  ['sessionid=m2; b=2', 'c=3'],            'm2'],
        ['sessionid later in line',  ['x=1; y=2; sessionid=late'],            'late'],
        ['empty sessionid=',         ['sessionid='],                          undef],
        ['empty sessionid= among',   ['a=1; sessionid=', 'b=2'],              undef],
        ['empty then a value',       ['sessionid=', 'sessionid=second'],      undef],
    );
    my %first;       # identity -> first response
    my %expect_n;    # identity -> n of the stored body
    my $upstream = 0;
    for my $pass (1, 2) {
        for my $c (@cases) {
            my ($name, $cookies, $id) = @$c;
            my $before = path_hits($p);
            my $r = $t->request('GET', $p, [map { (Cookie => $_) } @$cookies]);
            my $got = body($r);
            my $up = path_hits($p) - $before;
            my $label = "$name (pass $pass)";
            if ($r->{status} != 200) {
                fail("$label: status $r->{status}");
                next;
            }
            if (!defined $id) {
                ok(xc($r) eq 'BYPASS' && $up == 1, "$label: BYPASS, upstream")
                    or diag(xc($r) . " up=$up");
                is($got->{cookie}, join('; ', @$cookies), "$label: its own answer");
                next;
            }
            if (!exists $first{$id}) {
                $first{$id} = $r;
                ok(xc($r) eq 'MISS' && $up == 1, "$label: MISS, upstream (its own entry)")
                    or diag(xc($r) . " up=$up body cookie " . printable($got->{cookie} // ''));
            } else {
                ok(xc($r) eq 'HIT' && $up == 0 && $r->{body} eq $first{$id}{body},
                    "$label: HIT with the body stored for this identity")
                    or diag(xc($r) . " up=$up body cookie " . printable($got->{cookie} // ''));
            }
            # the body was made for this user, whatever request stored it
            my $sid = sid_of($got->{cookie} // '');
            ok(defined $sid && $sid eq $id, "$label: the body is this user's")
                or diag('body made for cookie ' . printable($got->{cookie} // ''));
        }
    }
    my $anon1 = $t->get($p);
    my $anon2 = $t->get($p);
    ok(xc($anon1) eq 'MISS' && xc($anon2) eq 'HIT' && body($anon2)->{cookie} eq ''
        && $anon2->{body} eq $anon1->{body}, 'anonymous: its own entry (MISS, HIT, no cookie)');
    my $ids = keys %first;
    is(path_hits($p), $ids + 6 + 1, "$ids identities + 6 BYPASSes + anonymous reached the application");
}

# ------------------------------------------------------------------------------------------
# Query strings

{
    my @many = map { "a$_=$_" } 0 .. 499;
    my @uris = (
        '/qs/many?' . join('&', @many),
        '/qs/dup?a=1', '/qs/dup?a=1&a=1', '/qs/dup?a=1&a=1&a=1', '/qs/dup?a=1&a=2&a=1',
        '/qs/nul?a=%00', '/qs/nul?%00=a', '/qs/nul?a=%00%00', '/qs/nul?a=%00&b=1',
        '/qs/esc?a=%ZZ', '/qs/esc?a=%Z', '/qs/esc?a=%', '/qs/esc?%ZZ', '/qs/esc?a=%zz',
        '/qs/plus?a=+', '/qs/plus?a=%2B', '/qs/plus?a=%20', '/qs/plus?+=a', '/qs/plus?a=++',
        '/qs/amp?a=1&', '/qs/amp?&a=1', '/qs/amp?a=1', '/qs/amp?a=1&&b=2', '/qs/amp?a=1&b=2',
        '/qs/amp?&', '/qs/amp?=', '/qs/amp?==', '/qs/amp?a==1', '/qs/amp?a=1=',
        '/qs/big?a=' . ('x' x 6144), '/qs/big?a=' . ('x' x 6143) . 'y',
        '/qs/hash?a=1#x', '/qs/hash?a=1#y', '/qs/hash?a=1%23x',
        '/qs/hi?a=%C3%A9', "/qs/hi?a=\xc3\xa9", "/qs/hi?a=\x80\xff",
    );
    # The documented key: the raw path and the query's arguments (split at "&", empty ones
    # included), stably sorted by name. Everything the client sent after the "?" counts: two
    # requests the upstream receives differently (other than in argument order) must be two
    # entries.
    my %canon_first;    # canonical key -> index of the first request with it
    my @first = map { $t->get($_) } @uris;
    for my $i (0 .. $#uris) {
        my $u = $uris[$i];
        my $r = $first[$i];
        my $name = 'query ' . printable(length $u > 60 ? substr($u, 0, 60) . '...' : $u);
        if ($r->{status} == 400) {
            pass("$name: 400 from nginx");
            next;
        }
        my $b = body($r);
        my $k = canon_query($u);
        if (!exists $canon_first{$k}) {
            $canon_first{$k} = $i;
            ok($r->{status} == 200 && xc($r) eq 'MISS' && ($b->{uri} // '') eq $u,
                "$name: MISS, a body made from this request")
                or diag("status $r->{status} " . xc($r) . ' body uri ' . printable($b->{uri} // ''));
        } else {
            my $j = $canon_first{$k};
            ok($r->{status} == 200 && xc($r) eq 'HIT' && $r->{body} eq $first[$j]{body},
                "$name: HIT, the entry of " . printable($uris[$j]) . ' (same arguments, other order)')
                or diag("status $r->{status} " . xc($r) . ' body uri ' . printable($b->{uri} // ''));
        }
    }
    my $seen = $app->count(qr{^/qs/});
    for my $i (0 .. $#uris) {
        my $u = $uris[$i];
        next if $first[$i]{status} == 400;
        my $r = $t->get($u);
        my $j = $canon_first{ canon_query($u) };
        my $name = 'query ' . printable(length $u > 60 ? substr($u, 0, 60) . '...' : $u);
        ok($r->{status} == 200 && xc($r) eq 'HIT' && $r->{body} eq $first[$j]{body},
            "$name: again: HIT with its entry's body")
            or diag('got ' . xc($r) . ' uri ' . printable(body($r)->{uri} // ''));
    }
    is($app->count(qr{^/qs/}), $seen, 'query strings: the repeats never reached the application');
    my $rev = '/qs/many?' . join('&', reverse @many);
    my $rv = $t->get($rev);
    ok(xc($rv) eq 'HIT' && $rv->{body} eq $first[0]{body},
        '500 arguments in reverse order: HIT, the same entry (arguments are keyed sorted by name)');
    is($app->count(qr{^/qs/}), $seen, 'still no more upstream requests');
}

# ------------------------------------------------------------------------------------------
# Paths: whatever nginx does, a response's body is made from what the upstream receives for
# that very request. The upstream's uri for a raw request is learnt from a BYPASS request
# (credentials, no identity: same location, never cached).

{
    my @paths = (
        '/pp/x', '/pp/./x', '/pp/a/../x', '//pp//x', '/pp//x', '/pp%2Fx', '/pp/%2e/x',
        '/pp/a/%2e%2e/x', '/pp/../pp/x', '/pp/%78', '/pp/x/', '/pp/x/.', '/pp/x/..', '/pp/x#frag',
        '/pp/x#other', '/pp/x%23frag', '/pp/x;p=1', '/pp/x?', '/pp/x%3F', '/pp/%C3%A9',
        "/pp/\xc3\xa9", '/pp/%ZZ', '/pp/x%00', '/../pp/x', '/pp/x%2F..%2F..%2Fetc',
        '/rw/x', '/rw/./x', '/rw/a/../x', '/rw//x', '/rw/%78', '/rw/x%2Fy', '/rw/x?a=1', '/rw/x%3Fa=1',
        '/rw/x#f', '/rw/%ZZ',
    );
    my (%bypass_uri, %status);
    for my $p (@paths) {
        my $b = $t->get($p, Cookie => 'other=1');
        $status{$p} = $b->{status};
        $bypass_uri{$p} = body($b)->{uri} if $b->{status} == 200;
    }
    my $bad = 0;
    my %key_body;
    my $upstream_before_round2;
    for my $round (1, 2) {
        $upstream_before_round2 = $app->count if $round == 2;
        for my $p (@paths) {
            my $r = $t->get($p);
            my $name = 'path ' . printable($p) . " (round $round)";
            if ($status{$p} != 200) {
                is($r->{status}, $status{$p}, "$name: $status{$p} as for the bypass request");
                ok($r->{status} < 500, "$name: no 5xx");
                next;
            }
            my $b = body($r);
            # equal up to the key's documented equivalences (argument order, an empty "?")
            ok($r->{status} == 200 && defined $b->{uri} && canon_query($b->{uri}) eq canon_query($bypass_uri{$p}),
                "$name: the body made from what the upstream receives for it ("
                    . printable($bypass_uri{$p}) . ')')
                or diag("got status $r->{status} " . xc($r) . ' body uri ' . printable($b->{uri} // ''));
            if ($round == 1) {
                $key_body{$p} = $r->{body};
            } else {
                ok(xc($r) eq 'HIT' && $r->{body} eq $key_body{$p}, "$name: HIT, the body of round 1")
                    or diag(xc($r));
            }
        }
    }
    is($app->count, $upstream_before_round2, 'paths: round 2 never reached the application');
    for my $p (grep { $status{$_} != 200 } @paths) {
        is($app->count(sub { $_[0]{uri} eq $p }), 0, 'path ' . printable($p) . ": $status{$p}, never upstream");
    }
    diag('paths: ' . join(', ', map { printable($_) . ' -> ' . ($status{$_} == 200 ? printable($bypass_uri{$_}) : $status{$_}) } @paths))
        if $ENV{TEST_VERBOSE};
}

# ------------------------------------------------------------------------------------------
# Methods, HEAD, HTTP/1.0, HTTP/0.9

{
    my $u = '/meth/x?_size=200';
    my $g = $t->get($u);
    ok(xc($g) eq 'MISS' && xc($t->get($u)) eq 'HIT', 'GET: MISS, then HIT');
    for my $m (qw(OPTIONS PUT DELETE PATCH FOO PROPFIND)) {
        my @r = map {
            $t->request($m, $u, [], $m =~ /^(?:PUT|PATCH)$/ ? "body-$_" : undef)
        } 1 .. 2;
        my @bm = map { body($_)->{method} // '' } @r;
        ok($r[0]{status} == 200 && $r[1]{status} == 200 && "@bm" eq "$m $m",
            "$m: answered by the application for $m (twice)")
            or diag("statuses $r[0]{status} $r[1]{status} methods @bm X-Cache " . xc($r[0]));
        isnt(n_of($r[0]), n_of($r[1]), "$m: two answers (nothing cached)");
        ok(!grep({ $_->{body} eq $g->{body} } @r), "$m: never the cached GET body");
        is(xc($r[0]) . xc($r[1]), '', "$m: \$throttle_cache_status empty");
    }
    is($app->count(sub { $_[0]{uri} eq $u && $_[0]{method} ne 'GET' }), 12, 'every non-GET reached the application');
    my $g2 = $t->get($u);
    ok(xc($g2) eq 'HIT' && $g2->{body} eq $g->{body}, 'GET after them (anonymous writes): the GET entry');

    my $hd = $t->request('HEAD', $u);
    ok($hd->{status} == 200 && xc($hd) eq 'HIT' && $hd->{body} eq ''
        && ($hd->{headers}{'content-length'} // '') eq length($g->{body}),
        'HEAD after GET: HIT, Content-Length of the GET body, no body');
    unlike($hd->{raw}, qr/\r\n\r\n.+/s, 'HEAD: nothing after the header');

    my $h10 = raw_req("GET $u HTTP/1.0\r\n\r\n");
    ok($h10->{status} == 200 && xc($h10) eq 'HIT' && $h10->{body} eq $g->{body},
        'HTTP/1.0 GET: HIT, the body');
    like($h10->{raw}, qr{^HTTP/1\.1 200}, 'HTTP/1.0: status line');
    is($h10->{headers}{'content-length'} // '', length $g->{body}, 'HTTP/1.0: Content-Length');
    ok(!exists $h10->{headers}{'transfer-encoding'}, 'HTTP/1.0: no chunking');
    my $hh10 = raw_req("HEAD $u HTTP/1.0\r\n\r\n");
    ok($hh10->{status} == 200 && xc($hh10) eq 'HIT' && $hh10->{raw} !~ /\r\n\r\n.+/s, 'HTTP/1.0 HEAD: HIT, no body');

    # a chunked upstream answer stored; an HTTP/1.0 client then gets Content-Length
    my $cu = '/meth/ch?_chunked=100&_size=1000';
    my $c1 = raw_req("GET $cu HTTP/1.0\r\n\r\n");
    ok($c1->{status} == 200 && xc($c1) eq 'MISS' && length($c1->{body}) == 1000
        && !exists $c1->{headers}{'transfer-encoding'}, 'HTTP/1.0 MISS of a chunked upstream answer: plain body');
    my $c2 = raw_req("GET $cu HTTP/1.0\r\n\r\n");
    ok($c2->{status} == 200 && xc($c2) eq 'HIT' && $c2->{body} eq $c1->{body}
        && ($c2->{headers}{'content-length'} // '') eq '1000' && !exists $c2->{headers}{'transfer-encoding'},
        'HTTP/1.0 HIT: Content-Length 1000, not chunked, the body');

    # HTTP/1.0 keep-alive: two hits on one connection
    my ($ka) = pipeline(["GET $u HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "GET $cu HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "GET $u HTTP/1.0\r\n\r\n"], [qw(GET GET GET)]);
    ok(@$ka == 3 && $ka->[0]{body} eq $g->{body} && $ka->[1]{body} eq $c1->{body}
        && $ka->[2]{body} eq $g->{body} && !grep({ ($_->{headers}{'x-cache'} // '') ne 'HIT' } @$ka),
        'HTTP/1.0 keep-alive: three HITs on one connection, the right bodies')
        or diag(scalar(@$ka) . ' responses');

    # HTTP/0.9: just the body
    my $h09 = raw_req("GET $u\r\n");
    is($h09->{raw}, $g->{body}, 'HTTP/0.9 GET on a cached key: exactly the cached body, no header')
        or diag(printable($h09->{raw}));
    is($app->count(sub { $_[0]{uri} eq $u && $_[0]{method} eq 'GET' }), 1, 'one GET ever reached the application');
}

# ------------------------------------------------------------------------------------------
# Pipelined keep-alive requests of several users

{
    my $a = '/pl/a';
    my %ck = (alice => 'sessionid=alice', bob => 'sessionid=bob', carol => 'sessionid=carol');
    my $pa = $t->get($a, Cookie => $ck{alice});
    my $pn = $t->get($a);
    ok(xc($t->get($a, Cookie => $ck{alice})) eq 'HIT' && xc($t->get($a)) eq 'HIT', 'pipeline: alice and anonymous cached');
    my $before = path_hits($a);

    my @spec = (    # [method, path, user, expected X-Cache or undef (either)]
        ['GET',  $a,                   'alice', 'HIT'],
        ['GET',  $a,                   'bob',   'MISS'],
        ['GET',  $a,                   undef,   'HIT'],
        ['HEAD', $a,                   'alice', 'HIT'],
        ['GET',  '/pl/b?_chunked=50',  'alice', 'MISS'],
        ['GET',  "$a?_delay=100",      'carol', 'MISS'],
        ['GET',  $a,                   'alice', 'HIT'],
        ['GET',  $a,                   'bob',   undef],
        ['GET',  '/pl/b?_chunked=50',  'alice', undef],
        ['GET',  "$a?_delay=100",      'carol', undef],
        ['GET',  $a,                   'carol', 'MISS'],
        ['GET',  $a,                   'alice', 'HIT'],
    );
    my @reqs = map {
        my ($m, $p, $user) = @{ $spec[$_] };
        req_text($m, $p, [defined $user ? (Cookie => $ck{$user}) : (), 'X-Test-Tag' => "pl$_"],
            undef, $_ == $#spec);
    } 0 .. $#spec;
    my ($got, $left) = pipeline(\@reqs, [map { $_->[0] } @spec], 15);
    is(scalar @$got, scalar @spec, 'pipeline: ' . scalar(@spec) . ' requests in one write, as many responses');
    is($left, '', 'pipeline: nothing after the last response');
    my $wrong = 0;
    for my $i (0 .. $#spec) {
        my ($m, $p, $user, $want) = @{ $spec[$i] };
        my $r = $got->[$i] or last;
        my $b = body($r);
        my $cookie = defined $user ? $ck{$user} : '';
        my $ok = $r->{status} == 200;
        $ok &&= $r->{headers}{'x-cache'} eq $want if defined $want;
        if ($m eq 'HEAD') {
            $ok &&= $r->{body} eq '' && $r->{headers}{'content-length'} == length $pa->{body};
        } else {
            $ok &&= ($b->{cookie} // '?') eq $cookie && ($b->{uri} // '') eq $p;
        }
        ok($ok, "pipeline #$i: $m $p as " . ($user // 'anonymous') . ': ' . ($want // 'HIT or MISS')
            . ', in order, own body')
            or diag("got $r->{status} " . ($r->{headers}{'x-cache'} // '') . ' cookie '
                . ($b->{cookie} // '?') . ' uri ' . ($b->{uri} // '?'));
    }
    ok($got->[0] && $got->[0]{body} eq $pa->{body}, 'pipeline: alice\'s hit is her stored body');
    ok($got->[2] && $got->[2]{body} eq $pn->{body}, 'pipeline: anonymous hit is the anonymous body');
    ok($got->[7] && body($got->[7])->{n} == body($got->[1])->{n}, 'pipeline: bob\'s second is his first')
        or diag('bob #7 ' . ($got->[7]{headers}{'x-cache'} // '') . ' (the store may not have landed yet)');
    my $ups = path_hits($a) - $before;
    ok($ups >= 3 && $ups <= 5, "pipeline: $ups upstream requests for $a (bob, carol x2, maybe bob/carol's repeats)");
}

# ------------------------------------------------------------------------------------------
# Clients that go away

{
    my $big = '/gone/big?_size=1048576';
    my $m = $t->get($big);
    my $h = $t->get($big);
    ok(xc($m) eq 'MISS' && xc($h) eq 'HIT' && length($h->{body}) == 1048576 && body($h)->{pattern_ok}
        && $h->{body} eq $m->{body}, '1 MB: MISS, HIT, the whole body');

    my $mark = $t->log_mark;
    # 20 clients at once: each reads the first bytes of the 1 MB HIT and closes (half with RST)
    my @s;
    for my $i (0 .. 19) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port, Proto => 'tcp',
            Timeout => 5) or die "connect: $!";
        setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0)) if $i % 2;
        syswrite $s, req_text('GET', $big, [$i % 4 == 3 ? ('Accept-Encoding' => 'gzip') : ()]);
        push @s, $s;
    }
    my $sel = IO::Select->new(@s);
    my %got;
    my $deadline = time + 5;
    while (keys %got < @s && time < $deadline) {
        for my $s ($sel->can_read(0.5)) {
            my $buf;
            my $n = sysread $s, $buf, 4096;
            $got{ fileno $s } += $n // 0;
            $sel->remove($s);
        }
    }
    is(scalar keys %got, 20, '20 clients got the start of the 1 MB HIT');
    like(join('', map { $_ > 0 ? 'x' : '0' } values %got), qr/^x+$/, 'each got some bytes');
    close $_ for @s;

    # 20 more that close right after sending: lookups (hit) in flight
    for my $i (0 .. 19) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port, Proto => 'tcp',
            Timeout => 5) or die "connect: $!";
        setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0)) if $i % 2;
        syswrite $s, req_text('GET', $big, []);
        close $s;
    }

    # 10 that go away while one fills a slow miss and the others wait for it
    my $slow = '/gone/slow?_delay=400&_size=5000';
    my @w;
    for my $i (0 .. 9) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port, Proto => 'tcp',
            Timeout => 5) or die "connect: $!";
        setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0)) if $i % 2;
        syswrite $s, req_text('GET', $slow, [Cookie => 'sessionid=gone']);
        push @w, $s;
    }
    sleep 0.15;
    close $_ for @w;
    sleep 0.5;

    my @after = $t->concurrent(8, sub { ['GET', $big] });
    is(scalar(grep { $_->{status} == 200 && xc($_) eq 'HIT' && $_->{body} eq $m->{body} } @after), 8,
        'after the aborts: 8 concurrent GETs, each a HIT with the whole 1 MB');
    is(uri_hits($big), 1, '1 MB: one upstream request in all');
    my $sl = $t->get($slow, Cookie => 'sessionid=gone');
    my $sb = body($sl);
    ok($sl->{status} == 200 && ($sb->{cookie} // '') eq 'sessionid=gone' && length($sl->{body}) == 5000
        && $sb->{pattern_ok}, 'after the abandoned fill: the slow key answers, 5000 bytes, own cookie (' . xc($sl) . ')')
        or diag("$sl->{status} " . xc($sl) . ' ' . length $sl->{body});
    my $sl2 = $t->get($slow, Cookie => 'sessionid=gone');
    ok(xc($sl2) eq 'HIT' && $sl2->{body} eq $sl->{body}, 'and is cached afterwards');
    my @bad = $t->log_lines(qr/\[(?:alert|crit|emerg)\]|exited on signal|throttle_cache.*(?:error|fail)/, $mark);
    is(scalar @bad, 0, 'no alert/crit, worker exit or cache error from the aborted clients')
        or diag(join "\n", @bad[0 .. ($#bad < 9 ? $#bad : 9)]);
}

# ------------------------------------------------------------------------------------------
# GET with a request body: never cached (the body may select the answer), passed on whole

{
    my $u = '/gb/x';
    my $m = $t->request('GET', $u, [], '0123456789');
    ok($m->{status} == 200 && xc($m) eq 'BYPASS', 'GET + 10-byte body: BYPASS, 200');
    my $ar = $app->last_request(sub { $_[0]{uri} eq $u });
    is($ar->{body_length}, 10, 'the body went upstream');
    my $h = $t->request('GET', $u, [], '0123456789');
    ok($h->{status} == 200 && xc($h) eq 'BYPASS' && body($h)->{n} != body($m)->{n},
        'again: BYPASS, its own answer');

    # keep-alive: a request body is never taken for the next request
    my @ka = (
        ['Content-Length body', req_text('GET', $u, ['Content-Length' => 10], '0123456789')],
        ['chunked body', req_text('GET', $u, ['Transfer-Encoding' => 'chunked'], "5\r\nabcde\r\n0\r\n\r\n")],
    );
    for my $c (@ka) {
        my ($name, $req) = @$c;
        my $next = "/gb/next-" . ($name =~ /chunked/ ? 'ch' : 'cl');
        my ($got, $left, $raw) = pipeline([$req, req_text('GET', $next, [], undef, 1)], [qw(GET GET)]);
        my @st = map { "$_->{status} " . ($_->{headers}{'x-cache'} // '') } @$got;
        is_deeply(\@st, ['200 BYPASS', '200 MISS'], "keep-alive: GET with a $name (BYPASS), then a GET: both answered")
            or diag("got: @st\n" . printable($raw));
        ok(@$got && (body($got->[0])->{uri} // '') eq $u, "$name: the first request's answer");
        ok(@$got >= 2 && (body($got->[1])->{uri} // '') eq $next, "$name: the next request gets its own answer")
            or diag('second response: ' . printable($got->[1] ? $got->[1]{raw} . $got->[1]{body} : 'none'));
    }

    # a body that is a request of its own if anything read it as one: request smuggling
    my $inner = "GET /gb/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    my ($got, $left, $raw) = pipeline([
        req_text('GET', $u, ['Content-Length' => length $inner], $inner),
        req_text('GET', '/gb/after', [], undef, 1),
    ], [qw(GET GET GET)]);
    is($app->count('/gb/smuggled'), 0, 'a request body is never executed as a request');
    is(scalar @$got, 2, 'two requests sent, two responses')
        or diag(join ' | ', map { "$_->{status} " . ($_->{headers}{'x-cache'} // '') . ' ' . (body($_)->{uri} // '') } @$got);
    ok(@$got >= 2 && (body($got->[1])->{uri} // '') eq '/gb/after', 'the second response answers the second request')
        or diag('second response body uri: ' . (@$got >= 2 ? body($got->[1])->{uri} // '?' : 'none'));

    is($app->count(sub { $_[0]{path} eq $u }), 5, 'GET with a body: each of the 5 went upstream');
    is($app->count(qr{^(?:0123456789|abcde|5\r)}), 0, 'no request body was parsed as a request by the app');
}

$t->done;
