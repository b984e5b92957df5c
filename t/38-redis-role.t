#!/usr/bin/perl
# throttle_redis pointed at a server that is not a usable single primary -- a replica, a Redis
# Cluster node, a Sentinel -- is loud, not silent (issue 12): nginx starts, the error log says once what the
# server is and what to configure, the circuit breaker opens, so strict zones answer
# PASSED_FALLBACK at once and Redis sees no EVALSHA per request; the sync zone and the cache
# fall back too, no 5xx, no worker crash. Once the replica is promoted (REPLICAOF NO ONE), strict
# decisions come from Redis again after the breaker's cool-down.

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;

my $conf = <<'EOF';
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis %%REDIS%% timeout=1s connect_timeout=200ms;
    throttle_zone $http_x_key zone=s:1m rate=100r/h mode=strict;
    throttle_zone $http_x_key zone=y:1m rate=100r/h mode=sync sync=100ms;
    throttle_cache_user $cookie_sessionid;
    throttle_cache_valid 60s;

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Status $throttle_status always;
        add_header X-Cache $throttle_cache_status always;
        location /s/ { throttle zone=s; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /y/ { throttle zone=y; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /c/ { throttle_cache c; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { add_header Cache-Control "max-age=60"; return 200 "ok\n"; }
    }
}
EOF

sub tally {
    my ($f, @r) = @_;
    my %n;
    $n{ $f->($_) }++ for @r;
    return join ', ', map { "$_ x $n{$_}" } sort keys %n;
}

my $seq = 0;
sub strict_one { $_[0]->get('/s/', 'X-Key' => 'k' . $seq++) }

# nginx against $server (a replica or a cluster node): what the operator sees.
sub misconfigured {
    my ($what, $server, $message, %opt) = @_;
    my $t = Throttle::Test->new(workers => 1);
    my $port = $server->port;
    $t->allow(qr/\[error\].*throttle_redis: redis 127\.0\.0\.1:$port: /);
    $t->write_conf($server->fill($conf))->run;
    my ($worker) = $t->worker_pids;

    # The breaker opens after a few failed connections: the message is logged by then.
    my @first = map { strict_one($t) } 1 .. 5;
    is(tally(sub { "$_[0]{status}:" . ($_[0]{headers}{'x-status'} // '') }, @first),
        '200:PASSED_FALLBACK x 5', "$what: strict requests fall back");
    ok(Throttle::Redis::wait_for(sub { $t->log_lines(qr/consecutive failures, circuit open/) }),
        "$what: the circuit breaker opens");

    # Past a cool-down: the breaker's probe connects, and fails the check before any command.
    my $probes = 0;
    ok(Throttle::Redis::wait_for(sub {
            strict_one($t);
            $probes = () = $t->log_lines(qr/\[notice\].*probe failed/);
        }, timeout => 30, step => 0.1), "$what: the breaker probes the server again");
    my @strict = map { strict_one($t) } 1 .. 40;
    is(tally(sub { "$_[0]{status}:" . ($_[0]{headers}{'x-status'} // '') }, @strict),
        '200:PASSED_FALLBACK x 40', "$what: strict zone: PASSED_FALLBACK");
    my @sync = map { $t->get('/y/', 'X-Key' => 'y') } 1 .. 20;
    is(tally(sub { "$_[0]{status}:" . ($_[0]{headers}{'x-status'} // '') }, @sync),
        '200:PASSED x 20', "$what: sync zone: decided locally");
    my @cache = map { $t->get('/c/', Cookie => 'sessionid=u') } 1 .. 10;
    is(scalar(grep { $_->{status} == 200 && ($_->{headers}{'x-cache'} // '') =~ /^(ERROR|BYPASS)\z/ } @cache),
        10, "$what: cache: answered by the upstream (ERROR or BYPASS)")
        or diag(tally(sub { "$_[0]{status}:" . ($_[0]{headers}{'x-cache'} // '') }, @cache));
    # Commands wait for the check: none of the requests' or the sync flushes' scripts ever
    # reached the server, probes included; the one EVALSHA per connection is the handshake's
    # permission check, in the same write as ROLE.
    if ($opt{commandstats} // 1) {
        my $stats = $server->info_commandstats;
        cmp_ok($stats->{role} // 0, '>=', 2, "$what: each connection asks ROLE");
        is($stats->{evalsha} // 0, $stats->{role} // 0,
            "$what: no EVALSHA but the permission check's, one per connection")
            or diag(explain $stats);
    }

    my @lines = $t->log_lines(qr/\[error\]/);
    is(scalar(grep { index($_, $message) >= 0 } @lines), 1,
        "$what: the error log says once what the server is")
        or diag(join "\n", $t->log_lines(qr/throttle_redis/));
    cmp_ok(scalar @lines, '<=', 3, "$what: a few [error] lines, not one per request")
        or diag(join "\n", @lines);
    is(join(',', $t->worker_pids), $worker, "$what: no worker crash");
    return $t;
}

# ---- a replica ----------------------------------------------------------------------------

my $primary = Throttle::Redis->new;
my $replica = Throttle::Redis->new(replicaof => $primary);
my $pport = $primary->port;
my $t = misconfigured('replica', $replica,
    "throttle_redis: redis 127.0.0.1:" . $replica->port . ": the server is a replica of "
        . "127.0.0.1:$pport (ROLE): writes fail with READONLY; point throttle_redis at the primary");

# Promoted: strict decisions come from Redis again after the cool-down (poll).
is($replica->cli('REPLICAOF', 'NO', 'ONE'), 'OK', 'replica promoted');
my $r;
ok(Throttle::Redis::wait_for(sub {
        $r = $t->get('/s/', 'X-Key' => 'back');
        ($r->{headers}{'x-status'} // '') eq 'PASSED';
    }, timeout => 90, step => 0.2),
    'promoted: strict decisions come from Redis again')
    or diag($r->{status} . ' ' . ($r->{headers}{'x-status'} // ''));
cmp_ok($replica->info_commandstats->{evalsha} // 0, '>', 0, 'promoted: EVALSHA reaches it');

# Demoted while connected (a failover): the next write answers READONLY, logged once; the
# connection is made again, the check finds a replica, the breaker opens.
my $mark = $t->log_mark;
is($replica->cli('REPLICAOF', '127.0.0.1', $pport), 'OK', 'demoted while connected');
my @after = map { strict_one($t) } 1 .. 30;
is(tally(sub { "$_[0]{status}:" . ($_[0]{headers}{'x-status'} // '') }, @after),
    '200:PASSED_FALLBACK x 30', 'demoted: strict requests fall back');
my @readonly = $t->log_lines(qr/\[error\].*the server answered "READONLY .*": it is a replica now \(a failover\?\): writes fail with READONLY; point throttle_redis at the primary; connection dropped/, $mark);
is(scalar @readonly, 1, 'demoted: the error log says so once')
    or diag(join "\n", $t->log_lines(qr/throttle_redis/, $mark));
ok(Throttle::Redis::wait_for(sub { $t->log_lines(qr/circuit open/, $mark) }),
    'demoted: the circuit breaker opens');
$t->finish;

# ---- a Redis Cluster node -----------------------------------------------------------------

my $node = Throttle::Redis->new(cluster => 1);
$t = misconfigured('cluster node', $node,
    "throttle_redis: redis 127.0.0.1:" . $node->port . ": the server is a Redis Cluster node: "
        . "single-server throttle_redis cannot use it, use \"throttle_redis cluster ADDRESS ...\" "
        . "(or point it at a standalone Redis)");
$t->finish;

# ---- a Sentinel ---------------------------------------------------------------------------

my $sentinel = Throttle::Redis->new(sentinel => $primary);
$t = misconfigured('sentinel', $sentinel,
    "throttle_redis: redis 127.0.0.1:" . $sentinel->port . ": the server is a Sentinel, not a "
        . "Redis server: point throttle_redis at the primary it monitors, or ask the Sentinel "
        . "for it: throttle_redis sentinel=MASTER_NAME ADDRESS", commandstats => 0);    # a Sentinel keeps no INFO commandstats
$t->finish;

done_testing;
