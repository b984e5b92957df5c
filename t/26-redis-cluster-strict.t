#!/usr/bin/perl
# mode=strict on a Redis Cluster (issue 12; `throttle_redis cluster ADDRESS ...`): two nginx
# instances (two workers each) share a 3-master cluster. Over many keys spread over all three
# masters, exactly the quota of each key passes. A request with two strict zones whose keys
# fall in different slots is decided per slot; one rejected by the second zone is given back
# in the first (a refund call), so the first zone's count in Redis is only the admitted ones.
# GCRA too. Bad configurations fail nginx -t with nginx-style messages.

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;
use Time::HiRes ();

my $t1 = Throttle::Test->new(workers => 2)->need_fds(1100);

# --- bad configurations
my @bad = (
    ['cluster without an address', 'throttle_redis cluster;',
        qr/"cluster" requires the address of at least one cluster node/],
    ['cluster with only parameters', 'throttle_redis cluster timeout=1s;',
        qr/"cluster" requires the address of at least one cluster node/],
    ['cluster with db=1', 'throttle_redis cluster 127.0.0.1:1 db=1;',
        qr/"db=1" is invalid with "cluster": a Redis Cluster has only db 0/],
    ['cluster with sentinel_password', 'throttle_redis cluster 127.0.0.1:1 sentinel_password=x;',
        qr/"sentinel_password=x" is invalid with "cluster"/],
    ['cluster with sentinel=', 'throttle_redis cluster 127.0.0.1:1 sentinel=m;',
        qr/"sentinel=m" is invalid with "cluster"/],
    ['cluster with a unix socket', 'throttle_redis cluster unix:/tmp/x.sock;',
        qr/invalid address "unix:\/tmp\/x.sock": a cluster node needs a host and port/],
    ['cluster with a bad address', 'throttle_redis cluster 127.0.0.1:99999;',
        qr/invalid address "127.0.0.1:99999"/],
);
for my $c (@bad) {
    my ($name, $http, $want, $loc) = @$c;
    $loc //= '';
    my ($ok, $out) = $t1->nginx_t(<<"EOF");
http {
    throttle_secret test-secret-0123456789abcdef;
    $http
    throttle_zone \$http_x_key zone=s:1m rate=10r/h mode=strict;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { throttle zone=s; $loc return 200; }
    }
}
EOF
    ok(!$ok, "$name: nginx -t fails");
    my ($line) = grep { /\[emerg\]/ } split /\n/, $out;
    like($line // $out, $want, "$name: message");
    my ($msg) = ($line // '') =~ /\[emerg\] (.*?)(?: in \S+:\d+)?$/;
    ok(($msg // '') =~ /^["a-z]/ && ($msg // '') !~ /\.$/, "$name: lowercase, no final period")
        or diag $out;
}
my ($ok, $out) = $t1->nginx_t(<<'EOF');
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis cluster 127.0.0.1:1 127.0.0.1:2 timeout=1s prefix=p: password=x username=u;
    throttle_zone $http_x_key zone=s:1m rate=10r/h mode=strict;
    server { listen 127.0.0.1:%%PORT%%; location / { throttle zone=s; return 200; } }
}
EOF
ok($ok, 'cluster with seeds and the usual parameters: nginx -t passes') or diag $out;
($ok, $out) = $t1->nginx_t(<<'EOF');
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis cluster 127.0.0.1:1 timeout=1s;
    server { listen 127.0.0.1:%%PORT%%; location / { throttle_cache c; return 200; } }
}
EOF
ok($ok, 'cluster with the response cache: nginx -t passes') or diag $out;

# --- a real cluster
my $cluster = Throttle::Redis->cluster(t => $t1, masters => 3, replicas => 0);
my $conf = $cluster->fill(<<'EOF');
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis cluster %%REDIS_CLUSTER%% timeout=1s;
    throttle_zone $http_x_key zone=s:1m  rate=10r/h mode=strict;
    throttle_zone $http_x_key zone=a:1m  rate=100r/h mode=strict;
    throttle_zone $http_x_key zone=b:1m  rate=5r/h mode=strict;
    throttle_zone $http_x_key zone=g:1m  rate=100r/h mode=strict algorithm=gcra burst=3;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096 reuseport;
        add_header X-Status $throttle_status always;
        location /s/  { throttle zone=s; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /ab/ { throttle zone=a; throttle zone=b; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /a/  { throttle zone=a; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /g/  { throttle zone=g; throttle zone=b; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location = /metrics { throttle_metrics; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
$t1->write_conf($conf)->run;
my $t2 = Throttle::Test->new(workers => 2)->write_conf($conf)->run;

sub zb { Throttle::Redis::zone_base(@_) }
sub slot_of { scalar $cluster->cli('CLUSTER', 'KEYSLOT', $_[0]) }
sub count_of {    # the sum of a base's window counters, through the cluster
    my ($base) = @_;
    my $n = 0;
    $n += $cluster->cli('GET', $_) // 0
        for grep { length } map { $_->cli('KEYS', "$base:*") } $cluster->masters;
    return $n;
}
sub statuses {
    my %n;
    $n{ $_->{status} . ':' . ($_->{headers}{'x-status'} // '') }++ for @_;
    return join ', ', map { "$_ x $n{$_}" } sort keys %n;
}

Throttle::Redis::clear_of_window_edge(3600, 40);

# --- 30 keys, 25 requests each at once across both instances, 10r/h: exactly 10 of each
my @keys = map { "key$_" } 1 .. 30;
my @r = $t1->concurrent(750, sub {
    my $i = shift;
    ['GET', '/s/', { 'X-Key' => $keys[$i % 30] }, undef, port => ($i % 2 ? $t2 : $t1)->port];
});
my %passed;
$passed{ $keys[$_ % 30] } += $r[$_]{status} == 200 for 0 .. $#r;
is(statuses(@r), '200:PASSED x 300, 429:REJECTED x 450', 'exactly 10 per key pass, 300 in all');
is(scalar(grep { $passed{$_} == 10 } @keys), 30, 'each of the 30 keys: exactly 10');
my %on;
for my $m ($cluster->masters) {
    $on{ $m->port } = scalar grep { length } $m->cli('KEYS', 'throttle:{s:*');
}
is(scalar(grep { $_ > 0 } values %on), 3, 'the keys are spread over all three masters')
    or diag explain \%on;
is(scalar(grep { count_of(zb('s', $_)) == 10 } @keys), 30, 'the cluster holds exactly 10 per key');

# --- metrics: one target, summed over the masters (each worker sent to all three)
sub metric {
    my ($name) = @_;
    my $text = $t1->get('/metrics')->{body} // '';
    return $text =~ /^\Q$name\E\{[^}]*\} (\d+)/m ? $1 : undef;
}
ok(Throttle::Redis::wait_for(sub { (metric('nginx_throttle_redis_connected') // -1) == 6 }),
    'metrics: 2 workers x 3 masters connected') or diag metric('nginx_throttle_redis_connected');
cmp_ok(metric('nginx_throttle_redis_commands_total') // 0, '>=', 6,
    'metrics: commands counted over the masters');
my $first = ($cluster->masters)[0]->address;
like($t1->get('/metrics')->{body} // '', qr/^nginx_throttle_redis_connected\{target="cluster \Q$first\E"\}/m,
    'metrics: the target is "cluster FIRST_SEED"');

# --- two zones in different slots: a request b rejects is given back in a
my $k = 'ab1';
isnt(slot_of(zb('a', $k)), slot_of(zb('b', $k)), 'a and b keep this key in different slots');
@r = $t1->concurrent(40, sub {
    ['GET', '/ab/', { 'X-Key' => $k }, undef, port => ($_[0] % 2 ? $t2 : $t1)->port];
});
is(statuses(@r), '200:PASSED x 5, 429:REJECTED x 35', 'a+b: exactly 5 of 40 pass (b is 5r/h)');
is(count_of(zb('b', $k)), 5, 'b holds 5');
ok(Throttle::Redis::wait_for(sub { count_of(zb('a', $k)) == 5 }, timeout => 10),
    'a holds 5 once the refunds are in: the 35 rejected are counted nowhere')
    or diag 'a holds ' . count_of(zb('a', $k));
@r = $t1->concurrent(10, sub { ['GET', '/a/', { 'X-Key' => $k }] });
is(statuses(@r), '200:PASSED x 10', 'a alone still admits');
is(count_of(zb('a', $k)), 15, 'a counts them: 15');

# --- gcra next to a sliding zone in another slot: gcra given back too
$k = 'g1';
isnt(slot_of(zb('g', $k)), slot_of(zb('b', $k)), 'g and b keep this key in different slots');
my $tat0;
@r = $t1->concurrent(20, sub {
    ['GET', '/g/', { 'X-Key' => $k }, undef, port => ($_[0] % 2 ? $t2 : $t1)->port];
});
is(statuses(@r), '200:PASSED x 3, 429:REJECTED x 17', 'g (burst 3) + b: exactly 3 of 20 pass');
is(count_of(zb('b', $k)), 3, 'b holds the 3 g admitted');
# g's TAT once every refund is in: 3 emissions (36 s each) from the first request.
my $gk = zb('g', $k) . ':gcra';
my $now_us = int(Time::HiRes::time() * 1e6);
ok(Throttle::Redis::wait_for(sub {
    my $tat = $cluster->cli('GET', $gk) // 0;
    $tat > $now_us + 2 * 36e6 - 10e6 && $tat < $now_us + 3 * 36e6 + 1e6;
}, timeout => 10), 'g holds three emissions ahead, not more') or diag $cluster->cli('GET', $gk);

unlike($t1->error_log . $t2->error_log, qr/\[error\][^\n]*(?:throttle_redis|unusable)/, 'no Redis error in either log');
$t2->finish;
$t1->finish;
$cluster->stop;
undef $cluster;
done_testing();
