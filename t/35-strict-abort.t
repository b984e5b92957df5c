#!/usr/bin/perl
# Clients that give up while their request waits for Redis (strict mode): the worker must
# neither crash nor touch the freed request when Redis answers later, and must go on serving.
use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use Throttle::Test;
use Throttle::Redis;

my $t = Throttle::Test->new(workers => 2);
my $redis = Throttle::Redis->new(t => $t);

$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis %%REDIS%% timeout=2s;
    throttle_zone $http_x_key zone=s:1m rate=100r/h mode=strict;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Status $throttle_status always;
        location /s/ { throttle zone=s; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location = /status { stub_status; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF

is($t->get('/s/', 'X-Key' => 'warm')->{headers}{'x-status'}, 'PASSED', 'strict zone answers');
my $before = $redis->script_calls;

$redis->pause;    # every strict request now waits (up to timeout=2s)
my @socks;
for my $i (1 .. 40) {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port, Timeout => 2)
        or die "connect: $!";
    print $s "GET /s/ HTTP/1.1\r\nHost: x\r\nX-Key: gone$i\r\nConnection: close\r\n\r\n";
    push @socks, $s;
}
# Wait until nginx has read all 40 and they wait for Redis (stub_status counts them as
# "Writing", plus the status request itself), then hang up.
my $waiting = Throttle::Redis::wait_for(sub {
    my ($w) = ($t->get('/status')->{body} // '') =~ /Writing: (\d+)/;
    return ($w // 0) >= 41;
}, timeout => 10);
ok($waiting, '40 requests wait for the paused Redis');
close $_ for @socks;
$redis->resume;

# The worker survives the late replies and keeps serving, decided by Redis.
my $ok = Throttle::Redis::wait_for(sub {
    ($t->get('/s/', 'X-Key' => 'after')->{headers}{'x-status'} // '') eq 'PASSED'
}, timeout => 10);
ok($ok, 'after the late replies, requests are decided by Redis again');
cmp_ok($redis->script_calls - $before, '>=', 1, 'the abandoned requests had reached Redis');
$t->log_unlike(qr/signal 11|exited on signal/, 'no worker died');

$t->done;
