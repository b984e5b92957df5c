#!/usr/bin/perl
# throttle_metrics itself: what nginx -t says of it, the methods and formats it answers, the
# access control an operator puts in front of it, and its shared-memory zone across reloads
# (the counters' meanings are tested in t/65 and t/66, with a real Prometheus in t/64).

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Throttle::Test;

my $t = Throttle::Test->new;

# Bad configurations.
my $zone = 'throttle_zone $binary_remote_addr zone=a:1m rate=10r/m;';
my @bad = (
    ['unknown format', 'throttle_metrics format=xml;', qr/invalid format "format=xml"/],
    ['unknown parameter', 'throttle_metrics every=1s;', qr/invalid parameter "every=1s"/],
    ['no value', 'throttle_metrics json;', qr/invalid parameter "json"/],
    ['twice', 'throttle_metrics; throttle_metrics format=json;',
        qr/"throttle_metrics" directive is duplicate/],
);
for my $c (@bad) {
    my ($name, $loc, $want) = @$c;
    my ($ok, $out) = $t->nginx_t(<<"EOF");
http {
    $zone
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /metrics { $loc }
    }
}
EOF
    ok(!$ok, "$name: nginx -t fails");
    my ($line) = grep { /\[emerg\]/ } split /\n/, $out;
    like($line // $out, $want, "$name: message");
    like($line // '', qr/\[emerg\] ["a-z].*[^.] in \S+:\d+$/, "$name: nginx style, with the line");
}
for my $ctx (['http', "throttle_metrics;\n    server { listen 127.0.0.1:%%PORT%%; }"],
             ['server', "server { listen 127.0.0.1:%%PORT%%; throttle_metrics; }"]) {
    my ($ok, $out) = $t->nginx_t("http {\n    $ctx->[1]\n}\n");
    ok(!$ok, "throttle_metrics in $ctx->[0]: nginx -t fails");
    like($out, qr/"throttle_metrics" directive is not allowed here/, "$ctx->[0]: message");
}
my ($good, $out) = $t->nginx_t(<<'EOF');
http {
    throttle_zone $binary_remote_addr zone=a:1m rate=10r/m;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /metrics { throttle_metrics; allow 127.0.0.1; deny all; }
        location = /metrics.json { throttle_metrics format=json; }
    }
}
EOF
ok($good, 'good: prometheus and json, with allow/deny') or diag $out;

# More zones than the counters have room for: nginx -t says so (the counters' zone is set up
# when nginx -t creates shared memory).
{
    my $zones = join "\n    ", map { "throttle_zone \$binary_remote_addr zone=z$_:32k rate=1r/s;" } 1 .. 257;
    my ($ok, $out) = $t->nginx_t(<<"EOF");
http {
    $zones
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /metrics { throttle_metrics; }
    }
}
EOF
    ok(!$ok, '257 zones with throttle_metrics: nginx -t fails');
    like($out, qr/\[emerg\] throttle_metrics: no room for the counters of zone "z257" \(at most 256 zones/,
        '257 zones: the message says the limit');
}

# A running nginx: no zone at all first (an empty exposition), then zones.
$t->write_conf(<<'EOF')->run;
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /metrics { throttle_metrics; }
        location = /metrics.json { throttle_metrics format=json; }
    }
}
EOF
my $r = $t->get('/metrics');
is($r->{status}, 200, 'nothing configured: 200');
is($r->{body}, '', 'nothing configured: an empty exposition');
like($r->{headers}{'content-type'}, qr{^text/plain; version=0\.0\.4}, 'content type 0.0.4');
$r = $t->get('/metrics.json');
is_deeply(JSON::PP::decode_json($r->{body}), { zones => {}, redis => {}, cache => {} },
    'nothing configured: empty JSON objects');

$t->write_file('index.html', 'hi');
$t->write_conf(<<'EOF');
http {
    throttle_zone $http_x_user zone=kept:1m rate=100r/m;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { throttle zone=kept; root %%TESTDIR%%; }
        location = /metrics { throttle_metrics; }
        location = /metrics.json { throttle_metrics format=json; }
        location = /private { throttle_metrics; allow 10.0.0.1; deny all; }
    }
}
EOF
ok($t->reload, 'reload: the metrics zone kept, a zone added');
$t->log_unlike(qr/throttle_metrics: the counters/, 'the counters were not laid out again');

$r = $t->get('/metrics');
is($r->{status}, 200, 'GET 200');
like($r->{headers}{'content-type'}, qr{^text/plain; version=0\.0\.4; charset=utf-8$},
    'Prometheus content type');
is($r->{headers}{'cache-control'}, 'no-store', 'not to be cached');
like($r->{body}, qr/^# HELP nginx_throttle_requests_total \S/m, 'HELP');
like($r->{body}, qr/^# TYPE nginx_throttle_requests_total counter$/m, 'TYPE');
like($r->{body}, qr/^nginx_throttle_keys_capacity\{zone="kept",mode="local"\} [1-9]\d*$/m,
    'capacity of the zone');
like($r->{body}, qr/^nginx_throttle_keys\{zone="kept",mode="local"\} 0$/m, 'no key yet');
unlike($r->{body}, qr/redis|cache_/, 'no Redis, no cache: no such family');
my $head = $t->request('HEAD', '/metrics');
is($head->{status}, 200, 'HEAD: 200');
is($head->{body}, '', 'HEAD: no body');
is($t->request('POST', '/metrics', [], 'x')->{status}, 405, 'POST: 405');
is($t->request('DELETE', '/metrics')->{status}, 405, 'DELETE: 405');
is($t->get('/private')->{status}, 403, 'deny all: 403');

# The keys gauge follows the zone's table, across workers.
for my $u (qw(alice bob carol)) {
    is($t->get('/', 'X-User' => $u)->{status}, 200, "$u passes");
}
like($t->get('/metrics')->{body}, qr/^nginx_throttle_keys\{zone="kept",mode="local"\} 3$/m,
    'three keys');

$r = $t->get('/metrics.json');
like($r->{headers}{'content-type'}, qr{^application/json}, 'JSON content type');
my $j = eval { JSON::PP::decode_json($r->{body}) };
ok($j, 'JSON parses') or diag $r->{body};
is($j->{zones}{kept}{mode}, 'local', 'JSON: the zone and its mode');
is($j->{zones}{kept}{keys}, 3, 'JSON: the same keys');
ok($j->{zones}{kept}{capacity} > 0, 'JSON: capacity');
is(scalar(keys %{ $j->{zones}{kept}{requests} }), 7, 'JSON: seven outcomes');

# Zone names are tokens nginx -t checks (letters, digits, '_', '-'); label escaping is unit-tested
# (t/unit/metrics_test.cpp). A reload that adds a zone keeps the others.
$t->write_conf(<<'EOF');
http {
    throttle_zone $http_x_user zone=kept:1m rate=100r/m;
    throttle_zone $http_x_user zone=new-one:1m rate=100r/m;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { throttle zone=kept; root %%TESTDIR%%; }
        location /n { throttle zone=new-one; root %%TESTDIR%%; }
        location = /metrics { throttle_metrics; }
    }
}
EOF
ok($t->reload, 'reload: a zone added');
$r = $t->get('/metrics');
like($r->{body}, qr/^nginx_throttle_keys\{zone="kept",mode="local"\} 3$/m, 'the kept zone kept its keys');
like($r->{body}, qr/^nginx_throttle_keys\{zone="new-one",mode="local"\} 0$/m, 'the new zone is there');

# A throttle_redis nothing uses is never connected: it is not exported either (a target saying
# "disconnected" forever would fire every alert on it).
$t->write_conf(<<'EOF');
http {
    throttle_redis 127.0.0.1:%%PORT_2%%;
    throttle_zone $http_x_user zone=kept:1m rate=100r/m;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { throttle zone=kept; root %%TESTDIR%%; }
        location = /metrics { throttle_metrics; }
    }
}
EOF
ok($t->reload, 'reload: an unused throttle_redis');
$r = $t->get('/metrics');
like($r->{body}, qr/^nginx_throttle_keys\{zone="kept",mode="local"\} 3$/m, 'zones exported');
unlike($r->{body}, qr/nginx_throttle_redis_/, 'the unused Redis target is not');

$t->done;
