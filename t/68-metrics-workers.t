#!/usr/bin/perl
# The Redis link's gauges are per worker and summed over live workers only: kill -9 of a worker
# leaves no ghost connection, and its respawned successor is counted once. Redis killed: the
# gauge falls to 0 and the connection errors are counted; back: connected again, reconnects
# counted. Polls the exposition; asserts no time.

use strict;
use warnings;
use Test::More;
use Time::HiRes qw(sleep time);
use Throttle::Test;
use Throttle::Redis;

my $t = Throttle::Test->new(workers => 2);
my $redis = Throttle::Redis->new(t => $t);

$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis %%REDIS%% timeout=1s connect_timeout=1s;
    throttle_zone $http_x_key zone=s:1m rate=100r/h mode=strict;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /s { throttle zone=s; try_files /nothing =204; }
        location = /metrics { throttle_metrics; }
    }
}
EOF

my $target = $redis->address;

sub metric {
    my ($name) = @_;
    my $body = $t->get('/metrics')->{body} // '';
    return $body =~ /^\Q$name\E(?:\{[^}]*\})? (\S+)$/m ? $1 : undef;
}
sub sample {
    my ($name, $labels) = @_;
    my $body = $t->get('/metrics')->{body} // '';
    return $body =~ /^\Q$name\E\{\Q$labels\E\} (\S+)$/m ? $1 : undef;
}
# Polls until the metric has the value (10 s at most); returns the last value seen.
sub wait_for {
    my ($name, $labels, $want) = @_;
    my $v;
    my $deadline = time + 10;
    while (time < $deadline) {
        $v = sample($name, $labels);
        return $v if defined $v && $v eq $want;
        sleep 0.02;
    }
    return $v;
}

my $tl = qq{target="$target"};
is(wait_for('nginx_throttle_redis_connected', $tl, 2), 2, 'both workers connected');
is(sample('nginx_throttle_redis_connects_total', $tl), 2, 'two connects');
is(sample('nginx_throttle_redis_pending_commands', $tl), 0, 'nothing pending');
is(sample('nginx_throttle_redis_breaker_open', $tl), 0, 'no breaker open');

my @w = $t->worker_pids;
is(scalar @w, 2, 'two workers');
kill 'KILL', $w[0];
my $deadline = time + 10;
while (time < $deadline && grep { $_ == $w[0] } $t->worker_pids) { sleep 0.02 }
is(wait_for('nginx_throttle_redis_connects_total', $tl, 3), 3, 'the successor connected');
is(wait_for('nginx_throttle_redis_connected', $tl, 2), 2,
    'kill -9 of a worker: its connection is not counted any more (its slot is free or taken over)');
$t->allow(qr/worker process \d+ exited on signal 9/);

# Requests through Redis: commands counted, the strict batch sizes observed.
for (1 .. 5) { is($t->get('/s', 'X-Key' => "k$_")->{status}, 204, "strict request $_"); }
ok(sample('nginx_throttle_redis_commands_total', $tl) >= 5, 'commands counted');
is(sample('nginx_throttle_redis_command_duration_seconds_count', $tl),
    sample('nginx_throttle_redis_commands_total', $tl) - sample('nginx_throttle_redis_pending_commands', $tl),
    'a duration for every answered command');

# Redis gone: the gauge falls to 0, connection errors counted; requests fall back.
$redis->stop;
for (1 .. 3) { $t->get('/s', 'X-Key' => "down$_") }
is(wait_for('nginx_throttle_redis_connected', $tl, 0), 0, 'Redis stopped: nobody connected');
ok(sample('nginx_throttle_redis_errors_total', qq{$tl,kind="connection"}) >= 1,
    'connection errors counted');
$redis->start;
is(wait_for('nginx_throttle_redis_connected', $tl, 2), 2, 'Redis back: both reconnected');
ok(sample('nginx_throttle_redis_reconnects_total', $tl) >= 2, 'reconnects counted');
$t->allow(qr/throttle_redis|redis|Connection refused/i);

$t->done;
