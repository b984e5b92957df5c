#!/usr/bin/perl
# A Redis that breaks the protocol -- or a proxy in front of it (Throttle::FakeRedis) that does:
# PING, AUTH and SCRIPT LOAD are answered by the real server, but every script call gets a
# reply too many, an aggregate header announcing 2^31 or 300 million elements, a bulk string
# of 2 GB, 10000 nested arrays, garbage, half a reply then a close, NOSCRIPT forever, an error
# nobody expects, or a reply of the wrong shape. A strict zone and a cached location stand in
# front of it. Always: every request is answered (200: the strict zone's local fallback, the
# cache going upstream) within a bound, no worker dies (hiredis would abort() on a reply
# nobody asked for), the workers do not reconnect once per request -- the circuit breaker
# opens on failed commands even though PING works -- and each incident is logged once. Once
# the proxy behaves again, Redis decides again.

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;
use Throttle::FakeRedis;
use Throttle::App;

my $workers = 2;
my $t = Throttle::Test->new(workers => $workers)->need_fds(200);
my $redis = Throttle::Redis->new(t => $t);
my $fake = Throttle::FakeRedis->new(t => $t, redis => $redis);
my $app = Throttle::App->new(t => $t)->start;

# timeout=200ms; a request slower than $bound waited for something else than the timeout.
my $bound = 3;

$t->write_conf($fake->fill(<<'EOF'))->run;
http {
    throttle_redis %%FAKE_REDIS%% timeout=200ms connect_timeout=200ms;
    throttle_zone $http_x_key zone=s:1m rate=100r/h mode=strict;
    throttle_cache_secret 0123456789abcdef-hostile-redis;
    throttle_cache_user $cookie_sessionid;
    throttle_cache_valid 60s;

    server {
        listen 127.0.0.1:%%PORT%% backlog=1024;
        add_header X-Status $throttle_status always;
        add_header X-Cache $throttle_cache_status always;
        location /s/ { throttle zone=s; proxy_pass http://%%APP%%; }
        location /c/ { throttle_cache c; proxy_pass http://%%APP%%; }
    }
}
EOF
my $port = $fake->port;
my $redis_log = qr/\[error\].*throttle_redis: redis 127\.0\.0\.1:$port: /;
$t->allow($redis_log);

sub xs { $_[0]{headers}{'x-status'} // '' }
sub xc { $_[0]{headers}{'x-cache'} // '' }
sub slowest { my $m = 0; $m = $_->{elapsed} > $m ? $_->{elapsed} : $m for @_; $m }
sub tally { my %n; $n{$_}++ for @_; join ', ', map { "$_ x $n{$_}" } sort keys %n }

my $poll = 0;
sub strict_again {
    my $r;
    Throttle::Redis::wait_for(sub {
        $r = $t->get('/s/', 'X-Key' => 'poll' . $poll++);
        xs($r) eq 'PASSED';
    }, timeout => 20, step => 0.05);
    return xs($r);
}

my @pids = sort { $a <=> $b } $t->worker_pids;
is(xs($t->get('/s/', 'X-Key' => 'warm')), 'PASSED', 'through the proxy: Redis decides');
is(xc($t->get('/c/warm', Cookie => 'sessionid=u')), 'MISS', 'through the proxy: MISS');
is(xc($t->get('/c/warm', Cookie => 'sessionid=u')), 'HIT', 'through the proxy: HIT');

my %says = (
    surplus     => qr/unexpected reply/,
    huge_array  => qr/array of 2147483647 elements/,
    array300m   => qr/array of 300000000 elements/,
    huge_bulk   => qr/bulk string of 2000000000 bytes announced/,
    nested      => qr/nested multi bulk/,
    garbage     => qr/Protocol error/,
    close_mid   => qr/connection lost/,
    noscript    => qr/NOSCRIPT/,
    wrong_error => qr/nobody expects this/,
    wrong_shape => qr/unusable reply/,
);

for my $mode (qw(surplus huge_array array300m huge_bulk nested garbage close_mid noscript
                 wrong_error wrong_shape)) {
    my $mark = $t->log_mark;
    my $conns = $fake->connections;
    $fake->mode($mode);
    my (@s, @c);
    for my $i (1 .. 12) {
        push @s, $t->get('/s/', 'X-Key' => "$mode-$i");
        push @c, $t->get("/c/$mode-$i", Cookie => 'sessionid=u');
    }
    my @both = $t->concurrent(20, sub {
        my $i = shift;
        $i % 2 ? ['GET', '/s/', { 'X-Key' => "$mode-c$i" }]
               : ['GET', "/c/$mode-c$i", { Cookie => 'sessionid=u' }];
    }, timeout => 30);
    push @s, grep { xs($_) ne '' } @both;
    push @c, grep { xc($_) ne '' } @both;
    my $opened = $fake->connections - $conns;
    $fake->mode('ok');

    is(tally(map { $_->{status} } @s, @c), '200 x ' . (@s + @c), "$mode: every request answered 200");
    ok(slowest(@s, @c) < $bound, sprintf '%s: slowest %.0f ms', $mode, 1000 * slowest(@s, @c));
    if ($mode ne 'surplus') {    # there, the first copy of each reply is the right one
        is(tally(map { xs($_) } @s), 'PASSED_FALLBACK x ' . @s, "$mode: strict zone on its fallback");
        is(scalar(grep { xc($_) !~ /^(?:ERROR|BYPASS)$/ } @c), 0,
            "$mode: cache goes upstream (" . tally(map { xc($_) } @c) . ')');
    }
    ok($opened <= 5 * $workers, "$mode: $opened connections for " . (@s + @c)
        . ' requests, not one per request');
    my @err = $t->log_lines($redis_log, $mark);
    ok(@err >= 1 && @err <= 2 * $workers,
        "$mode: logged once per incident (" . scalar(@err) . ' [error] lines)')
        or diag join "\n", @err;
    like(join("\n", $t->log_lines(qr/throttle_redis/, $mark)), $says{$mode}, "$mode: the log says why");
    is_deeply([sort { $a <=> $b } $t->worker_pids], \@pids, "$mode: no worker died");
    is(strict_again(), 'PASSED', "$mode: then, the proxy behaving, Redis decides again");
}

$t->log_unlike(qr/exited on signal/, 'no worker crashed');
$t->done;
