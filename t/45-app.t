#!/usr/bin/perl
# Throttle::App, the counting upstream application for the response cache tests, against
# plain nginx (the module is not loaded): counting and sequence numbers, every control
# argument, keep-alive and request bodies, concurrency (and delays served concurrently), a
# truncated response seen by nginx as an upstream error, %%APP_PORT%% in configs, and a stop
# that leaves no process behind. Times are checked only against what could not happen without
# a bug: a delay shorter than asked, a hang, delays served one after the other (told by the
# app's own arrival times), a stop that waits for its SIGKILL deadline.

use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use IO::Uncompress::Gunzip ();
use Time::HiRes qw(time sleep);
use Throttle::Test;
use Throttle::App;

my $t = Throttle::Test->new(module => 0)->need_fds(700);
# No single request may take longer (client-measured): a hang, not load. The client gives up
# after 10 s.
my $hang = 8;
my $app = Throttle::App->new(t => $t)->start;
is($t->app, $app, 'new(t => $t) registers the app with the test');
ok($app->port >= 20000 && $app->port < 32000, 'app listens on a harness port');
ok($app->running && $app->processes >= 1, 'app process runs');

$t->write_conf(<<'EOF')->run;
http {
    upstream app { server %%APP%%; keepalive 8; }
    server {
        listen 127.0.0.1:%%PORT%% backlog=4096;
        location / { proxy_pass http://127.0.0.1:%%APP_PORT%%; }
        location /ka/ {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
my $port = $app->port;
like($t->read_file('nginx.conf'), qr/server 127\.0\.0\.1:$port;.*proxy_pass http:\/\/127\.0\.0\.1:$port;/s,
    '%%APP%% and %%APP_PORT%% filled');
ok(!eval { $t->nginx_t("http { server { listen 127.0.0.1:%%APP_PORT_2%%; } }"); 1 }
        && $@ =~ /%%APP_PORT_2%%.*no app registered/, 'an unregistered app is an error');

# --- counting and sequence numbers, through nginx (HTTP/1.0, Connection: close)
my @r = map { $t->get($_, Cookie => 'sessionid=abc', Authorization => 'Bearer x', 'X-Test-Tag' => 'tag1') }
    '/api/x?a=1', '/api/x', '/other';
is_deeply([map { $_->{status} } @r], [200, 200, 200], 'three requests through nginx');
is_deeply([map { $_->{headers}{'x-app-n'} } @r], [1, 2, 3], 'X-App-N counts up');
is($r[0]{body}, qq({"n":1,"method":"GET","uri":"/api/x?a=1","cookie":"sessionid=abc","authorization":"Bearer x"}\n),
    'default body');
is($r[0]{headers}{'content-type'}, 'application/json', 'default content type');
is($app->count, 3, 'count');
is($app->count('/api/x'), 2, 'count(path)');
is($app->count(qr/a=1/), 1, 'count(regexp) on the uri');
is($app->count(sub { $_[0]{method} eq 'GET' }), 3, 'count(code)');
is($app->seq, 3, 'seq');
my @q = $app->requests;
is_deeply([map { [@$_{qw(n method uri path query cookie authorization tag version)}] } @q], [
    [1, 'GET', '/api/x?a=1', '/api/x', 'a=1', 'sessionid=abc', 'Bearer x', 'tag1', '1.0'],
    [2, 'GET', '/api/x', '/api/x', '', 'sessionid=abc', 'Bearer x', 'tag1', '1.0'],
    [3, 'GET', '/other', '/other', '', 'sessionid=abc', 'Bearer x', 'tag1', '1.0'],
], 'requests');
is($q[0]{headers}{connection}, 'close', 'all request headers recorded');
is($app->last_request->{n}, 3, 'last_request');

$app->reset;
is($app->count, 0, 'reset forgets the requests');
my $r = $t->get('/after-reset');
is($r->{headers}{'x-app-n'}, 4, 'the sequence continues after reset');
is($app->count, 1, 'counted after reset');
$app->reset;

# --- request bodies
$r = $t->request('POST', '/post', { 'Content-Type' => 'text/plain' }, "line1\nline2\ttab\\");
is($r->{status}, 200, 'POST through nginx');
my $q = $app->last_request;
is_deeply([@$q{qw(method body body_length)}], ['POST', "line1\nline2\ttab\\", 16], 'POST body recorded');
for my $m (qw(PUT PATCH DELETE)) {
    $r = $t->request($m, "/m/$m", {}, "body-$m");
    is($app->last_request->{body}, "body-$m", "$m body recorded");
}
$r = $t->request(undef, undef, undef, undef, port => $port, raw =>
    "POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    . "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n");
is($r->{status}, 200, 'chunked request body answered');
is($app->last_request->{body}, 'hello, world', 'chunked request body decoded');
$r = $app->request('POST', '/direct', { Expect => '100-continue' }, 'xyz');
like($r->{raw}, qr/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK/, 'Expect: 100-continue');
is($app->last_request->{body}, 'xyz', 'body after 100 Continue');

# --- keep-alive (and pipelining) straight to the app, HTTP/1.0 closes
{
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port) or die $!;
    print $s "GET /k1 HTTP/1.1\r\nHost: x\r\n\r\nGET /k2 HTTP/1.1\r\nHost: x\r\n\r\n"
        . "POST /k3 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
    local $/;
    my $all = <$s>;
    my @st = $all =~ /^HTTP\/1\.1 (\d+)/mg;
    is_deeply(\@st, [200, 200, 200], 'three pipelined requests on one connection');
    my @conn = $all =~ /^Connection: (\S+)\r$/mg;
    is_deeply(\@conn, ['keep-alive', 'keep-alive', 'close'], 'keep-alive until Connection: close');
    is($app->count(qr/^\/k\d/), 3, 'pipelined requests counted');

    $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port) or die $!;
    print $s "GET /h10 HTTP/1.0\r\n\r\n";
    $all = <$s>;
    like($all, qr/^HTTP\/1\.1 200 .*\r\nConnection: close\r\n/s, 'HTTP/1.0: the app closes');
    $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port) or die $!;
    print $s "GET /h10ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    my $got = '';
    sysread $s, $got, 65536, length $got until $got =~ /\}\n\z/;
    like($got, qr/\r\nConnection: keep-alive\r\n/, 'HTTP/1.0 with Connection: keep-alive is kept');
}
$r = $t->get("/ka/$_") for 1 .. 5;
is($app->count(qr/^\/ka\//), 5, 'upstream keepalive (HTTP/1.1) through nginx');
is($app->last_request->{version}, '1.1', 'nginx spoke HTTP/1.1');
$app->reset;

# --- control arguments
$r = $t->get('/s?_status=404');
is($r->{status}, 404, '_status=404');
like($r->{body}, qr/^\{"n":\d+,"method":"GET"/, 'an error status has the default body');
$r = $app->get('/s?_status=503');
like($r->{raw}, qr/^HTTP\/1\.1 503 Service Unavailable\r\n/, '_status=503 status line');
$r = $app->get('/s?_status=204');
ok($r->{status} == 204 && $r->{body} eq '' && !exists $r->{headers}{'content-length'},
    '_status=204: no body, no Content-Length');

my $t0 = time;
$r = $t->get('/d?_delay=300');
my $el = time - $t0;
ok($r->{status} == 200 && $el >= 0.29 && $el < $hang, sprintf('_delay=300 (%.3fs, at least 0.3 s)', $el));
$t0 = time;
$r = $app->get('/bd?_bodydelay=300');
$el = time - $t0;
ok($r->{status} == 200 && $el >= 0.29 && $el < $hang, sprintf('_bodydelay=300 (%.3fs, at least 0.3 s)', $el));

for my $size (0, 10, 85, 1000, 100_000, 3_000_001) {
    $r = $t->get("/size?_size=$size");
    my $n = $r->{headers}{'x-app-n'};
    is(length $r->{body}, $size, "_size=$size: exact length");
    is($r->{headers}{'content-length'}, $size, "_size=$size: Content-Length");
    is($r->{body}, Throttle::App::make_body($n, 'GET', "/size?_size=$size", '', '', $size),
        "_size=$size: the body is make_body()");
    if ($size >= 100) {
        my $p = Throttle::App::parse_body($r->{body});
        ok($p && $p->{n} == $n && $p->{uri} eq "/size?_size=$size" && $p->{pattern_ok},
            "_size=$size: parse_body: n, uri, filler");
    }
}
my $p = Throttle::App::parse_body(Throttle::App::make_body(7, 'GET', '/a', 'c', 'z', 500) . 'x');
ok($p->{n} == 7 && !$p->{pattern_ok}, 'parse_body: a changed filler is reported');
is(Throttle::App::pattern(60, 10), "XYZ\n000000", 'pattern at a line boundary');

$r = $t->get('/h?_cc=public,+max-age%3D60&_setcookie=a%3D1%3B+Path%3D/&_setcookie=b=2'
    . '&_vary=Accept-Language&_inv=tag:a&_hdr=X-One:1&_hdr=X-Two:+two&_ct=text/plain'
    . '&_etag=v1&_lm=1700000000&ignored=1');
is($r->{headers}{'cache-control'}, 'public, max-age=60', '_cc');
is($r->{headers}{'set-cookie'}, 'a=1; Path=/, b=2', '_setcookie (repeated)');
is($r->{headers}{vary}, 'Accept-Language', '_vary');
is($r->{headers}{'x-throttle-invalidate'}, 'tag:a', '_inv');
is_deeply([@{ $r->{headers} }{qw(x-one x-two)}], [1, 'two'], '_hdr (repeated)');
is($r->{headers}{'content-type'}, 'text/plain', '_ct');
is($r->{headers}{etag}, '"v1"', '_etag');
is($r->{headers}{'last-modified'}, 'Tue, 14 Nov 2023 22:13:20 GMT', '_lm (epoch seconds)');
$r = $app->get('/h?_xae=30');
is($r->{headers}{'x-accel-expires'}, 30, '_xae (nginx hides it: checked on the app)');
$r = $app->get('/c?_etag=v1', 'If-None-Match' => '"v0", "v1"');
ok($r->{status} == 304 && $r->{body} eq '', '_etag: If-None-Match answered 304');
$r = $app->get('/c?_lm=1700000000', 'If-Modified-Since' => 'Tue, 14 Nov 2023 22:13:20 GMT');
is($r->{status}, 304, '_lm: If-Modified-Since answered 304');
is($app->count('/c'), 2, '304s are counted too');

$r = $t->get('/g?_gzip=1&_size=5000');
is($r->{headers}{'content-encoding'}, 'gzip', '_gzip=1: Content-Encoding');
my $plain;
IO::Uncompress::Gunzip::gunzip(\$r->{body} => \$plain);
$p = Throttle::App::parse_body($plain);
ok($p && $p->{length} == 5000 && $p->{pattern_ok} && $p->{n} == $r->{headers}{'x-app-n'},
    '_gzip=1: the gunzipped body is the _size body');
ok(length $r->{body} < 1000, '_gzip=1: compressed');
$r = $app->get('/g?_gzip=auto', 'Accept-Encoding' => 'br, gzip');
ok(($r->{headers}{'content-encoding'} // '') eq 'gzip' && $r->{headers}{vary} eq 'Accept-Encoding',
    '_gzip=auto with Accept-Encoding: gzip');
$r = $app->get('/g?_gzip=auto');
ok(!$r->{headers}{'content-encoding'} && $r->{headers}{vary} eq 'Accept-Encoding'
        && $r->{body} =~ /^\{"n"/, '_gzip=auto without it');

$r = $app->get('/ch?_chunked=1&_size=10000');
ok($r->{headers}{'transfer-encoding'} eq 'chunked' && !exists $r->{headers}{'content-length'},
    '_chunked=1: Transfer-Encoding: chunked');
like($r->{raw}, qr/\r\n\r\n1000\r\n.{4096}\r\n1000\r\n.{4096}\r\n710\r\n.{1808}\r\n0\r\n\r\n\z/s,
    '_chunked=1: 4096-byte chunks and the last chunk');
is(length $r->{body}, 10000, '_chunked: decoded body');
$r = $app->get('/ch?_chunked=100&_size=250');
like($r->{raw}, qr/\r\n\r\n64\r\n.{100}\r\n64\r\n.{100}\r\n32\r\n.{50}\r\n0\r\n\r\n\z/s, '_chunked=100: 100-byte chunks');
$r = $t->get('/ka/ch?_chunked=1&_size=20000');
ok($r->{status} == 200 && length $r->{body} == 20000
    && Throttle::App::parse_body($r->{body})->{pattern_ok}, '_chunked through nginx (HTTP/1.1)');

$r = $app->get('/ab?_abort=100&_size=5000');
is($r->{headers}{'content-length'}, 5000, '_abort: full Content-Length');
is(length $r->{body}, 100, '_abort=100: 100 bytes of body');
is($r->{error}, 'short body', '_abort: a short body');
$r = $app->get('/ab?_abort=5000&_size=9000&_chunked=1');
ok(length($r->{raw}) < 6000 && $r->{raw} !~ /\r\n0\r\n\r\n\z/, '_abort with _chunked: no last chunk');

my $mark = $t->log_mark;
$r = $t->get('/ab?_abort=1000&_size=100000');
ok($r->{status} == 200 && length($r->{body}) < 100000, 'nginx passes the truncated response on, short');
ok(scalar $t->log_lines(qr/\[error\].*upstream prematurely closed connection/, $mark),
    '_abort: nginx logs an upstream error');
$mark = $t->log_mark;
$r = $t->get('/ab?_abort=0');
is($r->{status}, 200, '_abort=0: headers only');
ok(scalar $t->log_lines(qr/upstream prematurely closed/, $mark), '_abort=0: an upstream error');

$r = $app->request('HEAD', '/head?_size=300');
ok($r->{status} == 200 && $r->{headers}{'content-length'} == 300 && $r->{body} eq '',
    'HEAD: Content-Length of the body, no body');
is($app->last_request->{method}, 'HEAD', 'HEAD recorded');

# --- concurrency: every request answered and counted exactly once
$app->reset;
my $first = $app->seq + 1;
$t0 = time;
@r = $t->concurrent(100, sub { ['GET', "/conc/$_[0]", { 'X-Test-Tag' => "c$_[0]" }] });
$el = time - $t0;
is($t->tally(@r)->{200}, 100, sprintf('100 concurrent requests through nginx (%.2fs)', $el));
is($app->count(qr/^\/conc\//), 100, 'all 100 counted');
my %n = map { $_->{n} => 1 } $app->requests;
is_deeply([sort { $a <=> $b } keys %n], [$first .. $first + 99], 'distinct, consecutive sequence numbers');
is(scalar(grep { $r[$_]{body} =~ m{"uri":"/conc/$_"} } 0 .. 99), 100, 'each response for its own request');
is_deeply([sort map { $_->{tag} } $app->requests], [sort map { "c$_" } 0 .. 99], 'tags recorded');

# Delays served concurrently: requests are in their delay at the same time. The app records
# each request's arrival before its delay, so a request that arrived less than 300 ms after
# another one arrived came in before that one could have been answered, however loaded the
# machine (load only makes the delays longer). Served one by one, no two would be.
sub in_delay_together {
    my @a = sort { $a <=> $b } map { $_->{time} } @_;
    my $most = 0;
    for my $i (0 .. $#a) {
        my $n = grep { $a[$_] < $a[$i] + 0.3 } $i .. $#a;
        $most = $n if $n > $most;
    }
    return $most;
}
$app->reset;
$t0 = time;
@r = $t->concurrent(100, sub { ['GET', "/slow/$_[0]?_delay=300"] });
$el = time - $t0;
is($t->tally(@r)->{200}, 100, '100 concurrent delayed requests through nginx');
is($app->count(qr/^\/slow\//), 100, 'all counted');
my $together = in_delay_together($app->requests);
ok($together >= 2, sprintf('... served concurrently: up to %d in their delay together (%.2fs for 100 x 300 ms)',
    $together, $el));

$app->reset;
$t0 = time;
@r = $t->concurrent(250, sub { ['GET', "/direct/$_[0]?_delay=300&_size=2000"] }, port => $port);
$el = time - $t0;
is($t->tally(@r)->{200}, 250, sprintf('250 concurrent connections straight to the app (%.2fs)', $el));
is($app->count, 250, 'all 250 counted');
$together = in_delay_together($app->requests);
ok($together >= 2, sprintf('delays served concurrently: up to %d in their delay together (%.2fs for 250 x 300 ms)',
    $together, $el));
is(scalar(grep { length $_->{body} == 2000 } @r), 250, 'every body complete');

# connection processes are reaped: no zombie once the connections closed (nginx keeps its
# idle HTTP/1.1 upstream connections of /ka/ open, each with its live process)
sub zombies {
    # A process gone since the listing (reaped meanwhile) is no zombie: its stat does not open.
    grep {
        my $fh;
        open($fh, '<', "/proc/$_/stat") && (<$fh> // '') =~ /\)\s+Z/
    } $app->processes;
}
my $deadline = time + 10;
sleep 0.05 while zombies() && time < $deadline;
is(scalar zombies(), 0, 'connection processes reaped (no zombies)');
ok($app->processes <= 1 + 4 * 8, 'only the server and the kept-alive connections are left');

# --- stop and restart
$t->get("/ka/hold$_") for 1 .. 3;    # nginx keeps idle upstream connections open
ok($app->processes > 1, 'kept-alive connections have their processes');
my $pg = $app->pgid;
$t0 = time;
$app->stop;
ok(!$app->running, sprintf('stopped (%.2fs)', time - $t0));
is(scalar $app->processes, 0, 'no process of the group left');
ok(!-e "/proc/$pg", 'server process reaped');
ok(!IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port), 'port closed');
$t->allow(qr/connect\(\) failed \(111: Connection refused\) while connecting to upstream/);
is($t->get('/down')->{status}, 502, 'nginx: 502 while the app is down');

my $seq = $app->seq;
$app->start;
is($app->port, $port, 'started again on the same port');
$r = $t->get('/again');
is($r->{headers}{'x-app-n'}, $seq + 1, 'sequence kept across a restart');

# an app stopped in DESTROY, with a request in flight
{
    my $tmp = Throttle::App->new->start;
    my $tport = $tmp->port;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $tport) or die $!;
    print $s "GET /x?_delay=10000 HTTP/1.1\r\nHost: x\r\n\r\n";
    $tmp->wait_for_count(1, undef, timeout => 5);
    my $tpg = $tmp->pgid;
    ok(scalar(() = $tmp->processes) >= 2, 'a connection in flight');
    # stop() sends SIGTERM and gives the server 5 s before SIGKILL: a server that does not end
    # on SIGTERM takes at least that long (and the request in flight would take 10 s).
    $t0 = time;
    undef $tmp;
    my $took = time - $t0;
    ok($took < 4.5, sprintf('DESTROY stops the app at once (%.2fs; 5 s when SIGTERM is ignored)', $took));
    my @left = grep {
        my $fh;
        open($fh, '<', "/proc/$_/stat") && (<$fh> // '') =~ /\)\s+\S\s+\d+\s+(\d+)/ && $1 == $tpg
    } grep { /^\d+$/ } do { opendir my $d, '/proc'; readdir $d };
    is(scalar @left, 0, 'no process left after DESTROY');
}

$t->done;
