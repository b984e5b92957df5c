#!/usr/bin/perl
# Strict decisions with a script call in flight (natural batching): a worker has at most one
# EVALSHA waiting for its reply; the decisions that arrive meanwhile wait, and go together in
# the next call once the reply comes. A proxy in front of Redis (Throttle::FakeRedis) holds
# the replies back on demand. Then: every waiting request is answered by Redis, in one call;
# a Redis that does not answer sends each request to its fallback by its own timeout, and
# Redis decides again once it answers; a connection reset with a call in flight does not
# stall strict mode either.
use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time);
use Throttle::Test;
use Throttle::Redis;
use Throttle::FakeRedis;

my $k = 1;    # calls in flight per worker (src/ngx/limit/strict.cpp)
my $t = Throttle::Test->new(workers => 1);
my $redis = Throttle::Redis->new(t => $t);
my $fake = Throttle::FakeRedis->new(t => $t, redis => $redis);

$t->write_conf($fake->fill(<<'EOF'))->run;
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis %%FAKE_REDIS%% timeout=3s;
    throttle_zone $http_x_key zone=s:1m rate=100r/h mode=strict;
    server {
        listen 127.0.0.1:%%PORT%% backlog=1024;
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
$t->allow(qr/\[error\].*throttle_redis: /);

sub xs { $_[0]{headers}{'x-status'} // '' }
sub tally { my %n; $n{$_}++ for @_; join ', ', map { "$_ x $n{$_}" } sort keys %n }

# Requests sent now, answered later: each a socket and when it was sent.
sub send_requests {
    my ($tag, $n) = @_;
    my @out;
    for my $i (1 .. $n) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $t->port, Timeout => 5)
            or die "connect: $!";
        print $s "GET /s/ HTTP/1.1\r\nHost: x\r\nX-Key: $tag$i\r\nConnection: close\r\n\r\n";
        push @out, { sock => $s, sent => time };
    }
    return @out;
}

# Their answers: X-Status of each (empty when none came), and the slowest, in seconds.
sub answers {
    my $slowest = 0;
    my @status;
    for my $r (@_) {
        local $/;
        my $s = $r->{sock};
        my $text = <$s> // '';
        my $took = time - $r->{sent};
        $slowest = $took if $took > $slowest;
        push @status, $text =~ /^X-Status: (\S+)/mi ? $1 : '';
        close $s;
    }
    return ($slowest, @status);
}

# Requests nginx has read and not answered (stub_status' Writing, less the status request).
sub waiting {
    my ($w) = ($t->get('/status')->{body} // '') =~ /Writing: (\d+)/;
    return ($w // 1) - 1;
}

my $poll = 0;
sub strict_again {
    my $r;
    Throttle::Redis::wait_for(sub {
        $r = $t->get('/s/', 'X-Key' => 'poll' . $poll++);
        xs($r) eq 'PASSED';
    }, timeout => 20, step => 0.05);
    return xs($r);
}

is(xs($t->get('/s/', 'X-Key' => 'warm')), 'PASSED', 'Redis decides');

# 1. Redis holds its answer: one call out, 30 requests arrive and wait in the queue.
{
    my $calls = $fake->count('EVALSHA');
    $fake->mode('hold');
    my @first = send_requests('first', 1);
    ok(Throttle::Redis::wait_for(sub { $fake->count('EVALSHA') > $calls }, timeout => 10),
        'held: the first request reached Redis');
    my @more = send_requests('more', 30);
    ok(Throttle::Redis::wait_for(sub { waiting() >= 31 }, timeout => 10),
        'held: 30 more requests wait');
    is($fake->count('EVALSHA') - $calls, $k, "held: $k call in flight while they wait");
    $fake->mode('ok');
    my ($slowest, @status) = answers(@first, @more);
    is(tally(@status), 'PASSED x 31', 'released: every request decided by Redis');
    is($fake->count('EVALSHA') - $calls, $k + 1, 'released: the 30 waiting went in one call');
    is($fake->held, $k, "at most $k EVALSHA outstanding on the connection");
    diag sprintf 'held: slowest request %.0f ms', 1000 * $slowest;
}

# 2. Redis does not answer (for longer than the 3 s timeout): every request ends by its
# fallback, those queued behind the call in flight too; then Redis decides again.
{
    my $calls = $fake->count('EVALSHA');
    $fake->mode('hold');
    my @first = send_requests('mute', 1);
    Throttle::Redis::wait_for(sub { $fake->count('EVALSHA') > $calls }, timeout => 10);
    my @later = send_requests('mute-later', 20);
    my ($slowest, @status) = answers(@first, @later);
    is(tally(@status), 'PASSED_FALLBACK x 21', 'silent: every request answered by its fallback');
    diag sprintf 'silent: slowest request %.0f ms (timeout 3000 ms)', 1000 * $slowest;
    $fake->mode('ok');
    is(strict_again(), 'PASSED', 'silent, then answering: Redis decides again');
}

# 3. The connection is reset with a call in flight and requests queued behind it.
{
    my $calls = $fake->count('EVALSHA');
    $fake->mode('hold');
    my @first = send_requests('reset', 1);
    Throttle::Redis::wait_for(sub { $fake->count('EVALSHA') > $calls }, timeout => 10);
    my @later = send_requests('reset-later', 20);
    Throttle::Redis::wait_for(sub { waiting() >= 21 }, timeout => 10);
    $fake->mode('reset');
    my ($slowest, @status) = answers(@first, @later);
    is(scalar(grep { $_ eq 'PASSED' || $_ eq 'PASSED_FALLBACK' } @status), 21,
        'reset: every request answered (' . tally(@status) . ')');
    diag sprintf 'reset: slowest request %.0f ms', 1000 * $slowest;
    $fake->mode('ok');
    is(strict_again(), 'PASSED', 'reset: Redis decides again');
}

$t->log_unlike(qr/exited on signal/, 'no worker crashed');
$t->done;
