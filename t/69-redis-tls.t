#!/usr/bin/perl
# TLS to Redis (throttle_redis ADDRESS tls ...): bad TLS parameters fail `nginx -t` with an
# nginx-style message (the certificate files are read at configuration time); a strict zone
# and the response cache work end to end against redis-server's TLS port with mutual TLS (the
# server requires a client certificate; the decisions are counted in Redis, INFO
# commandstats, and nothing reaches its plaintext port but this test's redis-cli); a reload to
# a CA that did not sign the server's certificate fails the connection with the verify error
# logged, requests answered by the fallback; a reload back works again.

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 2);
my $redis = Throttle::Redis->new(t => $t, tls => 1, tls_auth_clients => 1);
my $app = Throttle::App->new(t => $t)->start;
my $dir = $redis->tls_dir;

# ---------------------------------------------------------------------------------------
# nginx -t

sub conf {
    my ($redis_line) = @_;
    return <<"EOF";
http {
    throttle_secret test-secret-0123456789abcdef;
    $redis_line
    throttle_zone \$binary_remote_addr zone=a:1m rate=10r/m mode=strict;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { throttle zone=a; }
    }
}
EOF
}

sub fails_with {
    my ($name, $line, $want) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my ($ok, $out) = $t->nginx_t(conf($line));
    ok(!$ok, "$name: nginx -t fails");
    my ($emerg) = grep { /\[emerg\]/ } split /\n/, $out;
    like($emerg // $out, $want, "$name: message");
    my ($msg) = ($emerg // '') =~ /\[emerg\] (.*?)(?: in \S+:\d+)?$/;
    ok(defined $msg && $msg =~ /^["a-z]/ && $msg !~ /\.$/, "$name: lowercase, no final period")
        or diag($msg // $out);
}

my $addr = '127.0.0.1:' . $redis->tls_port;
fails_with('tls_ca without tls', "throttle_redis $addr tls_ca=$dir/ca.crt;",
    qr/"tls_ca=\Q$dir\E\/ca\.crt" requires "tls" after the address/);
fails_with('missing CA file', "throttle_redis $addr tls tls_ca=$dir/nope.crt;",
    qr/cannot load tls_ca "\Q$dir\E\/nope\.crt": No such file or directory/);
fails_with('CA file not a certificate', "throttle_redis $addr tls tls_ca=$dir/server.ext;",
    qr/cannot load tls_ca "\Q$dir\E\/server\.ext": /);
fails_with('certificate without key', "throttle_redis $addr tls tls_cert=$dir/client.crt;",
    qr/"tls_cert" requires "tls_key"/);
fails_with('key without certificate', "throttle_redis $addr tls tls_key=$dir/client.key;",
    qr/"tls_key" requires "tls_cert"/);
fails_with('key of another certificate',
    "throttle_redis $addr tls tls_cert=$dir/client.crt tls_key=$dir/server.key;",
    qr/tls_key "\Q$dir\E\/server\.key" does not match tls_cert "\Q$dir\E\/client\.crt"/);
fails_with('tls_verify=maybe', "throttle_redis $addr tls tls_verify=maybe;",
    qr/invalid tls_verify "tls_verify=maybe"/);
fails_with('empty server name', "throttle_redis $addr tls tls_server_name=;",
    qr/invalid tls_server_name "tls_server_name=": empty/);
fails_with('tls twice', "throttle_redis $addr tls tls;", qr/invalid parameter "tls"/);
ok(scalar $t->nginx_t(conf("throttle_redis 127.0.0.1:1 tls tls_ca=$dir/ca.crt;")),
    'a good TLS configuration passes nginx -t with Redis down');
ok(scalar $t->nginx_t(conf("throttle_redis sentinel=mymaster 127.0.0.1:1 127.0.0.1:2 tls "
        . "tls_ca=$dir/ca.crt tls_server_name=localhost;")),
    'with sentinel=, tls follows the Sentinels\' addresses');
fails_with('tls before the Sentinels',
    "throttle_redis sentinel=mymaster tls 127.0.0.1:1 tls_ca=$dir/ca.crt;",
    qr/"sentinel=mymaster" requires the address of at least one sentinel/);

# ---------------------------------------------------------------------------------------
# end to end, mutual TLS

sub full_conf {
    my ($ca) = @_;
    return $redis->fill(<<"EOF");
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis %%REDIS_TLS%% tls tls_ca=%%REDIS_TLS_DIR%%/$ca
                   tls_cert=%%REDIS_TLS_DIR%%/client.crt tls_key=%%REDIS_TLS_DIR%%/client.key
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

$t->write_conf($app->fill(full_conf('ca.crt')))->run;

sub statuses {
    my %n;
    $n{ $_->{status} . ':' . ($_->{headers}{'x-status'} // '') }++ for @_;
    return join ', ', map { "$_ x $n{$_}" } sort keys %n;
}

$redis->reset_stats;
my @r = map { $t->get('/s/', 'X-Key' => 'k1') } 1 .. 8;
is(statuses(@r), '200:PASSED x 5, 429:REJECTED x 3', 'strict zone over TLS: exactly 5 of 8 pass');
my $evals = $redis->script_calls;
cmp_ok($evals, '>=', 5, "the decisions were Redis' ($evals script calls)");

my $first = $t->get('/c/item');
is($first->{headers}{'x-cache'}, 'MISS', 'cache over TLS: the first request is a MISS');
my $stored = Throttle::Redis::wait_for(sub {
    my $h = $t->get('/c/item');
    return ($h->{headers}{'x-cache'} // '') eq 'HIT' ? $h : undef;
});
ok($stored, 'then a HIT, from Redis over TLS');
is($stored && $stored->{body}, $first->{body}, 'the stored bytes');
is($app->count(sub { $_[0]{uri} eq '/c/item' }), 1, 'the application saw one request for it');

# ---------------------------------------------------------------------------------------
# a reload to a CA that did not sign the server's certificate, and back

my $mark = $t->log_mark;
$t->write_conf($app->fill(full_conf('other.crt')));
ok($t->reload, 'reload to the wrong CA');
my $logged = Throttle::Redis::wait_for(sub {
    $t->get('/s/', 'X-Key' => 'k2');
    return scalar $t->log_lines(qr/TLS handshake failed: certificate verify failed: /, $mark);
});
ok($logged, 'the verify error is logged');
my $fb = $t->get('/s/', 'X-Key' => 'k3');
is($fb->{headers}{'x-status'}, 'PASSED_FALLBACK', 'requests are answered by the fallback');

$t->write_conf($app->fill(full_conf('ca.crt')));
ok($t->reload, 'reload back to the right CA');
my $back = Throttle::Redis::wait_for(sub {
    my $h = $t->get('/s/', 'X-Key' => 'k4');
    return ($h->{headers}{'x-status'} // '') eq 'PASSED' ? $h : undef;
});
ok($back, 'decisions come from Redis again');

$t->done;
