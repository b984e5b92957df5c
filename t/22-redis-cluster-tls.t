#!/usr/bin/perl
# TLS on a Redis Cluster (issue 12): `throttle_redis cluster SEEDS tls ...` passes nginx -t; a
# strict zone counts exactly and the response cache goes MISS then HIT against a 3-master
# cluster whose nodes speak TLS (--tls-cluster yes: CLUSTER SLOTS asked over TLS answers the
# TLS ports, so every master is reached over TLS; a plaintext answer would fail the handshake
# and the requests would fall back); a reload to a CA that did not sign the nodes' certificate
# logs the verify error and requests are answered by the fallback, never a 5xx.

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 2);
my $cluster = Throttle::Redis->cluster(masters => 3, t => $t, tls => 1);
my $app = Throttle::App->new(t => $t)->start;

sub full_conf {
    my ($ca) = @_;
    return $cluster->fill(<<"EOF");
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis cluster %%REDIS_CLUSTER_TLS%% tls tls_ca=%%REDIS_TLS_DIR%%/$ca
                   timeout=1s connect_timeout=1s;
    throttle_zone \$http_x_key zone=s:1m rate=5r/h mode=strict;
    add_header X-Status \$throttle_status always;
    add_header X-Cache \$throttle_cache_status always;
    proxy_http_version 1.1;

    server {
        listen 127.0.0.1:%%PORT%%;
        location /s/ { throttle zone=s; proxy_pass http://127.0.0.1:%%APP_PORT%%; }
        location /c/ {
            throttle_cache main;
            throttle_cache_valid 200 60s;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
    }
}
EOF
}

ok(scalar $t->nginx_t($app->fill(full_conf('ca.crt'))), 'cluster with tls passes nginx -t');
$t->write_conf($app->fill(full_conf('ca.crt')))->run;

sub statuses {
    my %n;
    $n{ $_->{status} . ':' . ($_->{headers}{'x-status'} // '') }++ for @_;
    return join ', ', map { "$_ x $n{$_}" } sort keys %n;
}

Throttle::Redis::clear_of_window_edge(3600, 30);
$_->reset_stats for $cluster->masters;
# Nine keys: their hash slots spread over the masters (all on one: 1 in 2187).
for my $key (map { "key$_" } 1 .. 9) {
    my @r = map { $t->get('/s/', 'X-Key' => $key) } 1 .. 7;
    is(statuses(@r), '200:PASSED x 5, 429:REJECTED x 2',
        "strict zone over a TLS cluster, $key: exactly 5 of 7 pass");
}
my @used = grep { $_->script_calls > 0 } $cluster->masters;
cmp_ok(scalar @used, '>=', 2, scalar(@used) . ' masters made decisions over TLS');
my $calls = 0;
$calls += $_->script_calls for $cluster->masters;
cmp_ok($calls, '>=', 45, "the decisions were Redis' ($calls script calls)");

# Each worker reads the namespace generation at its first lookup on a cluster: until then a
# BYPASS (as in t/21). Every response that is not a HIT went upstream; a HIT did not.
my ($first, $upstream) = (undef, 0);
Throttle::Redis::wait_for(sub {
    my $h = $t->get('/c/item');
    $upstream++;
    return 0 if ($h->{headers}{'x-cache'} // '') eq 'BYPASS';
    $first = $h;
});
is($first && $first->{headers}{'x-cache'}, 'MISS',
    'cache over a TLS cluster: the first lookup is a MISS');
my $stored = Throttle::Redis::wait_for(sub {
    my $h = $t->get('/c/item');
    return $h if ($h->{headers}{'x-cache'} // '') eq 'HIT';
    $upstream++;
    return 0;
});
ok($stored, 'then a HIT, from the cluster over TLS');
is($stored && $stored->{body}, $first && $first->{body}, 'the stored bytes');
is($app->count(sub { $_[0]{uri} eq '/c/item' }), $upstream,
    'the application saw every request but the HIT');

my @errors = $t->log_lines(qr/\[(?:warn|error|crit|alert|emerg)\].*throttle_(?:redis|cache)/);
is(scalar @errors, 0, 'nothing failed over TLS with the right CA (the fill channel included)')
    or diag(join "\n", @errors);

# ---------------------------------------------------------------------------------------
# a reload to a CA that did not sign the nodes' certificate

my $mark = $t->log_mark;
$t->write_conf($app->fill(full_conf('other.crt')));
ok($t->reload, 'reload to the wrong CA');
my @seen;
my $logged = Throttle::Redis::wait_for(sub {
    push @seen, $t->get('/s/', 'X-Key' => 'echo');
    return scalar $t->log_lines(qr/TLS handshake failed: certificate verify failed: /, $mark);
});
ok($logged, 'the verify error is logged');
my $fb = $t->get('/s/', 'X-Key' => 'foxtrot');
push @seen, $fb;
is($fb->{headers}{'x-status'}, 'PASSED_FALLBACK', 'requests are answered by the fallback');
is(scalar(grep { $_->{status} >= 500 } @seen), 0, 'no 5xx');

$t->done;
