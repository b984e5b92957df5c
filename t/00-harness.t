#!/usr/bin/perl
# The harness itself, against plain nginx (the module is not loaded): start, requests,
# concurrency, reload (good and refused), nginx -t, and the teardown log check.

use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time);
use Throttle::Test;

my $t = Throttle::Test->new(module => 0)->need_fds(1100)->write_conf(<<'EOF');
http {
    server {
        listen 127.0.0.1:%%PORT%% backlog=4096;
        root %%TESTDIR%%/html;
        location = /gen { return 200 "gen1\n"; }
        location /echo/ { return 200 "$uri"; }
        location = /two { add_header X-Two a; add_header X-Two b; return 204; }
        location /proxy/ { proxy_pass http://127.0.0.1:%%PORT_2%%/; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "backend $request_method $uri $content_length\n"; }
    }
}
EOF
$t->write_file('html/index.html', "hello\n");

ok(-s $t->conf_path, 'config written');
my $conf = $t->read_file('nginx.conf');
like($conf, qr/^worker_processes 4;$/m, 'four workers by default');
like($conf, qr/^error_log \S+\/error\.log \w+;$/m, 'error log in the test directory');
unlike($conf, qr/load_module/, 'no load_module when module => 0');
unlike($conf, qr/%%/, 'every placeholder replaced');
isnt($t->port(1), $t->port(2), 'two distinct ports');

my $t0 = time;
$t->run;
ok($t->running, sprintf('nginx started (%.2fs)', time - $t0));

my $r = $t->get('/index.html');
is($r->{status}, 200, 'static file served');
is($r->{body}, "hello\n", 'static body');
is($r->{headers}{'content-length'}, 6, 'header names are lowercased');

$r = $t->get('/two');
is($r->{status}, 204, 'add_header location');
is($r->{headers}{'x-two'}, 'a, b', 'repeated headers joined');

$r = $t->request('POST', '/proxy/x', { 'X-A' => 1 }, 'abcd');
is($r->{body}, "backend POST /x 4\n", 'request() with method, headers and body via proxy');

$r = $t->request('POST', '/index.html', {}, 'x');
is($r->{status}, 405, 'POST to a static file');

$r = $t->get('/nothing');
is($r->{status}, 404, 'missing file gives not found');

# 1000 connections at once; every response arrives, in request order.
$t0 = time;
my @r = $t->concurrent(1000, sub { ['GET', "/echo/$_[0]", { 'X-N' => $_[0] }] });
my $elapsed = time - $t0;
is(scalar @r, 1000, 'concurrent returns 1000 responses');
is($t->tally(@r)->{200}, 1000, sprintf('1000 concurrent requests answered (%.2fs)', $elapsed));
is(scalar(grep { $r[$_]{body} eq "/echo/$_" } 0 .. 999), 1000, 'responses in request order');

# A reload that changes what is served.
is($t->get('/gen')->{body}, "gen1\n", 'first generation');
(my $text = $t->{conf_text}) =~ s/gen1/gen2/;
ok($t->write_conf($text)->reload, 'reload accepted');
is($t->get('/gen')->{body}, "gen2\n", 'new generation serves right after reload()');

# A reload nginx refuses: the old configuration keeps serving.
$t->allow(qr/unknown directive "bogus_directive"/);
my $mark = $t->log_mark;
(my $bad = $text) =~ s/(location = \/gen)/bogus_directive on;\n        $1/;
ok(!$t->write_conf($bad)->reload, 'reload refused');
is(scalar $t->log_lines(qr/\[emerg\].*unknown directive "bogus_directive"/, $mark), 1,
    'log_lines after a mark');
is($t->get('/gen')->{body}, "gen2\n", 'old configuration still serves');
$t->write_conf($text);

# nginx -t
my ($ok, $out) = $t->nginx_t(<<'EOF');
http { server { listen 127.0.0.1:%%PORT_3%%; } }
EOF
ok($ok, 'nginx -t passes a good config') or diag $out;
like($out, qr/test is successful/, 'nginx -t output');

($ok, $out) = $t->nginx_t(<<'EOF');
http { limit_req_zone $binary_remote_addr zone=a:1m rate=100r/x; server { listen 127.0.0.1:%%PORT_3%%; } }
EOF
ok(!$ok, 'nginx -t fails a bad config');
like($out, qr/invalid rate "rate=100r\/x"/, 'nginx -t output has the message');

$t->log_like(qr/start worker process/, 'log_like');
$t->log_unlike(qr/invalid rate/, 'nginx -t errors stay out of error.log');

# The response parser.
$r = Throttle::Test::parse_response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    . "X-A: 1\r\nx-a: 2\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n");
is($r->{body}, 'hello world', 'chunked body decoded');
is($r->{headers}{'x-a'}, '1, 2', 'repeated headers joined whatever their case');
$r = Throttle::Test::parse_response("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
is($r->{error}, 'short body', 'a short body is reported');
$r = Throttle::Test::parse_response("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 1);
ok(!$r->{error} && $r->{body} eq '', 'HEAD: no body expected');
$r = $t->request('HEAD', '/index.html');
is_deeply([$r->{status}, $r->{body}, $r->{error}], [200, '', undef], 'HEAD request');
$r = $t->get('/', Connection => 'close');
is($r->{status}, 200, 'index served (explicit Connection header is not doubled)');
$r = $t->request('GET', '/', {}, undef, port => $t->port(9));
is($r->{status}, 0, 'connection refused: status 0');
like($r->{error}, qr/connect/, 'connection refused: error says so');

# The teardown check, on a made-up log.
my $u = Throttle::Test->new(module => 0);
my $log = join "\n",
    '2024/01/01 00:00:00 [notice] 1#1: start worker process 2',
    '2024/01/01 00:00:00 [alert] 1#1: zone "tiny" is full',
    '2024/01/01 00:00:00 [crit] 1#1: something',
    '==123==ERROR: AddressSanitizer: heap-use-after-free',
    'src/x.cpp:1:2: runtime error: signed integer overflow';
is(scalar $u->unexpected_log_lines($log), 4, 'alert, crit, asan and ubsan reported');
$u->expect_log_level('alert');
is(scalar $u->unexpected_log_lines($log), 3, 'expect_log_level');
$u->allow(qr/\[crit\] .* something/);
is(scalar $u->unexpected_log_lines($log), 2, 'allow');
$u->finish;

$t0 = time;
$t->stop;
ok(!$t->running, sprintf('graceful stop (%.2fs)', time - $t0));
$t->done;
