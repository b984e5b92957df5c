#!/usr/bin/perl
# Graceful shutdown (SIGQUIT) with requests waiting on Redis: Redis is paused (SIGSTOP: it
# answers nothing), requests on a strict location and a cached location wait for it, then the
# master is sent SIGQUIT. Every waiting request is still answered -- by the strict zone's
# fallback and by the upstream once the Redis timeout passes -- and then the workers and the
# master exit, without "open socket ... left in connection" alerts.
#
# And Redis reached through nginx's own stream proxy, in the same nginx: the module's Redis
# connections (the client's and the cache's fill channel) are sessions of that proxy in some
# worker, so a worker that kept its Redis connection until its own exit would keep the other
# workers' sessions -- and so themselves -- alive (until proxy_timeout, 10 minutes). SIGQUIT
# must end them all promptly.
#
# No time is asserted: the master's exit is polled for with a generous bound (60 s, against a
# Redis timeout of 1 s), long enough for a loaded machine, far shorter than a 10 minute hang.

use strict;
use warnings;
use Test::More;
use POSIX ();
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 4)->need_fds(200);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_redis %%REDIS%% timeout=1s;
    throttle_zone $http_x_key zone=strict:1m rate=100r/s mode=strict;
    throttle_cache_secret 0123456789abcdef-graceful-exit;
    throttle_cache_user $cookie_sessionid;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096;
        add_header X-Status $throttle_status always;
        add_header X-Cache $throttle_cache_status always;
        # Not a proxy_pass to a server of this nginx: its listening sockets close at SIGQUIT.
        location /s/ { throttle zone=strict; empty_gif; }
        location /c/ { throttle_cache c; proxy_pass http://%%APP%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location = /status { stub_status; }
    }
}
EOF

# Redis answers before the pause: the client and the fill channel are connected.
is($t->get('/s/x', 'X-Key' => 'a')->{headers}{'x-status'}, 'PASSED', 'Redis decides before the pause');
is($t->get('/c/x', Cookie => 'sessionid=a')->{headers}{'x-cache'}, 'MISS', 'the cache looks up before the pause');

# Requests being processed (stub_status' "Writing", less the status request itself).
sub in_flight {
    my $body = $t->request('GET', '/status', undef, undef, port => $t->port(2))->{body};
    return $body =~ /Writing: (\d+)/ ? $1 - 1 : 0;
}

my $n = 16;
$redis->pause;
my $results = $t->testdir . '/results';
my $client = fork // die "fork: $!\n";
if ($client == 0) {
    my @r = $t->concurrent($n, sub {
        my $i = shift;
        return $i % 2 ? ['GET', "/s/w$i", { 'X-Key' => "w$i" }]
                      : ['GET', "/c/w$i", { Cookie => "sessionid=w$i" }];
    }, timeout => 90);
    open my $out, '>', $results or POSIX::_exit(1);
    for my $x (@r) {
        print $out join(' ', $x->{status}, $x->{error} // 'complete',
            $x->{headers}{'x-status'} || '-', $x->{headers}{'x-cache'} || '-'), "\n";
    }
    close $out;
    POSIX::_exit(0);
}

ok(Throttle::Redis::wait_for(sub { in_flight() >= $n }, timeout => 30),
    "$n requests wait for the paused Redis");
ok($t->quit(timeout => 60), 'SIGQUIT: the master exited (its workers with it)');
waitpid $client, 0;
$redis->resume;

my @lines = split /\n/, $t->read_file('results');
is(scalar @lines, $n, 'every response recorded');
is(scalar(grep { m{^200 complete PASSED_FALLBACK -$} } @lines), $n / 2,
    'strict: every waiting request answered by the fallback') or diag(join "\n", @lines);
is(scalar(grep { m{^200 complete - ERROR$} } @lines), $n / 2,
    'cache: every waiting request answered by the upstream') or diag(join "\n", @lines);
is(scalar($t->log_lines(qr/open socket .* left in connection/)), 0,
    'no worker left a socket open at exit');
$t->finish;

# --- Redis through the stream proxy of the same nginx
SKIP: {
    my $stream = '/usr/lib/nginx/modules/ngx_stream_module.so';
    skip "no $stream (apt-get install libnginx-mod-stream)", 4 unless -f $stream;

    my $t2 = Throttle::Test->new(workers => 4);
    my $app2 = Throttle::App->new(t => $t2)->start;
    $t2->write_conf($redis->fill(<<"EOF"))->run;
load_module %%MODULE%%;
load_module $stream;
events { worker_connections 4096; }

stream {
    server {
        listen 127.0.0.1:%%PORT_3%%;
        proxy_pass %%REDIS%%;
    }
}

http {
    throttle_redis 127.0.0.1:%%PORT_3%% timeout=1s;
    throttle_zone \$http_x_key zone=strict:1m rate=100r/s mode=strict;
    throttle_cache_secret 0123456789abcdef-graceful-exit;
    throttle_cache_user \$cookie_sessionid;

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Status \$throttle_status always;
        add_header X-Cache \$throttle_cache_status always;
        location /s/ { throttle zone=strict; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /c/ { throttle_cache c; proxy_pass http://%%APP%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\\n"; }
    }
}
EOF

    # Every worker's client and fill channel connect through the proxy.
    my @r = $t2->concurrent(32, sub {
        my $i = shift;
        return $i % 2 ? ['GET', "/s/p$i", { 'X-Key' => "p$i" }]
                      : ['GET', "/c/p$i", { Cookie => "sessionid=p$i" }];
    });
    is(scalar(grep { $_->{status} == 200 && ($_->{headers}{'x-status'} // '') ne 'PASSED_FALLBACK'
        && ($_->{headers}{'x-cache'} // '') ne 'ERROR' } @r), 32,
        'through the stream proxy: Redis decides and the cache looks up');
    ok(Throttle::Redis::wait_for(sub { $redis->clients >= 8 }, timeout => 30),
        'the workers hold their connections (client and fill channel) through the proxy');
    ok($t2->quit(timeout => 60), 'SIGQUIT: the master exited (its workers with it)');
    is(scalar($t2->log_lines(qr/open socket .* left in connection/)), 0,
        'no worker left a socket open at exit');
    $t2->finish;
}

done_testing;
