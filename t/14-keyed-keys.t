# No client key reaches shared memory or Redis in the clear: zones store and send the keyed
# digest of a key (throttle_secret; a zone without one makes its own random secret). Keys of 1,
# 32 (a Django session key) and 200 bytes in local, sync and strict zones; two instances with
# the same secret share counts, with another secret they do not; a reload keeps counts (and the
# random secret); a changed secret starts them over; nginx -t refuses what cannot work.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Throttle::Test;
use Throttle::Redis;

my $S  = Throttle::Redis::TEST_SECRET;
my $S2 = 'another-secret-for-the-third-host';

my $t1 = Throttle::Test->new(workers => 2);
my $redis = Throttle::Redis->new(t => $t1);

my %key = (
    one     => 'Z',                                    # no hex digit, no name part holds it
    session => 'q8ixt1mb3n2vdw0a7zyl5kpo9cr4fhgj',     # 32 bytes, like Django's session keys
    long    => substr('LongKey-' . join('', map { chr(65 + $_ % 26) } 0 .. 300), 0, 200),
);
is(length $key{$_}, { one => 1, session => 32, long => 200 }->{$_}, "$_ key: length") for sort keys %key;

my $conf = <<'EOF';
http {
    SECRET_LINE
    throttle_redis %%REDIS%% timeout=1s;
    throttle_zone $http_x_key zone=loc:1m rate=100r/h;
    throttle_zone $http_x_key zone=syn:1m rate=100r/h mode=sync sync=100ms;
    throttle_zone $http_x_key zone=str:1m rate=10r/h  mode=strict;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Status $throttle_status always;
        add_header X-Remaining $throttle_remaining always;
        location /loc/ { throttle zone=loc; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /syn/ { throttle zone=syn; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /str/ { throttle zone=str; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF
sub conf_with {
    my ($line) = @_;
    (my $c = $conf) =~ s/SECRET_LINE/$line/;
    return $redis->fill($c);
}

# The bytes of nginx's shared memory (every MAP_SHARED mapping of the master, which maps all
# zones), read through /proc/PID/mem.
sub shm_bytes {
    my ($pid) = @_;
    open my $maps, '<', "/proc/$pid/maps" or return undef;
    open my $mem, '<:raw', "/proc/$pid/mem" or return undef;
    my $all = '';
    while (my $line = <$maps>) {
        my ($from, $to, $perm) = $line =~ /^([0-9a-f]+)-([0-9a-f]+) (\S+)/ or next;
        next unless $perm =~ /^r.*s$/;
        no warnings 'portable';
        my ($a, $b) = (hex $from, hex $to);
        sysseek($mem, $a, 0) or next;
        my $buf = '';
        my $n = sysread($mem, $buf, $b - $a);
        $all .= $buf if $n;
    }
    return $all;
}

sub statuses { join ' ', map { $_->{status} } @_ }

# --- one instance, secret set: every zone, every key length
$t1->write_conf(conf_with("throttle_secret $S;"))->run;
for my $name (sort keys %key) {
    for my $zone (qw(loc syn str)) {
        my $r = $t1->get("/$zone/", 'X-Key' => $key{$name});
        is($r->{status}, 200, "$zone, $name key: passes");
        is($r->{headers}{'x-status'}, 'PASSED', "$zone, $name key: decided") if $zone eq 'str';
    }
}
for my $name (sort keys %key) {
    ok(Throttle::Redis::wait_for(sub { $redis->sum(Throttle::Redis::zone_base('syn', $key{$name}) . ':*') == 1 }),
        "syn, $name key: flushed under PREFIX{syn:DIGEST}");
    is($redis->sum(Throttle::Redis::zone_base('str', $key{$name}) . ':*'), 1,
        "str, $name key: counted under PREFIX{str:DIGEST}");
}
my ($values) = $redis->values_of('*');
my @names = sort keys %$values;
ok(@names >= 6, 'Redis holds the sync and strict counts (' . scalar(@names) . ' keys)');
for my $name (sort keys %key) {
    my $k = $key{$name};
    is(scalar(grep { index($_, $k) >= 0 } @names), 0, "Redis key names never hold the $name key");
    is(scalar(grep { index($values->{$_} // '', $k) >= 0 } @names), 0,
        "Redis values never hold the $name key");
}
is(scalar(grep { !/^throttle:\{(?:syn|str):[0-9a-f]{32}\}:(?:\d+|flush:[0-9a-f-]+)$/ } @names), 0,
    'every name is PREFIX{ZONE:32 hex digits}:WINDOW (or a flush id)') or diag "@names";
is(scalar(grep { /\{loc:/ } @names), 0, 'the local zone sends nothing');

# Shared memory: the keyed digests are there (the scan sees the zones), the keys are not.
my $shm = shm_bytes($t1->pid);
SKIP: {
    skip 'cannot read /proc/PID/mem', 8 unless defined $shm && length $shm;
    for my $name (sort keys %key) {
        my $digest = pack 'H*', Throttle::Redis::zone_digest('loc', $key{$name});
        ok(index($shm, $digest) >= 0, "shm: the loc zone holds the $name key's digest");
    }
    ok(index($shm, $key{session}) < 0, 'shm: the session key is nowhere');
    ok(index($shm, substr($key{long}, 0, 16)) < 0, 'shm: no 16 bytes of the long key');
    ok(index($shm, substr($key{long}, 100, 16)) < 0, 'shm: not even from its middle');
    ok(index($shm, substr($key{session}, 0, 8)) < 0, 'shm: no 8 bytes of the session key');
    ok(index($shm, pack('H*', Throttle::Redis::zone_digest('syn', $key{session}))) >= 0,
        'shm: the sync zone holds its own digest of the session key');
}

# --- a second instance with the same secret shares the counts
my $t2 = Throttle::Test->new(workers => 2);
$t2->write_conf(conf_with("throttle_secret $S;"))->run;
my @r = $t1->concurrent(20, sub {
    my $i = shift;
    return ['GET', '/str/', { 'X-Key' => $key{session} }, undef,
        port => ($i % 2 ? $t2->port : $t1->port)];
});
my $tally = $t1->tally(@r);
is($tally->{200} // 0, 9, 'strict, same secret on two instances: exactly 9 more of 20 pass (10r/h)')
    or diag join ' ', map { "$_->{status}:" . ($_->{headers}{'x-status'} // '') . ($_->{error} ? ":$_->{error}" : '') } @r;
is($redis->sum(Throttle::Redis::zone_base('str', $key{session}) . ':*'), 10,
    'strict: both counted under one Redis name');
is(statuses(map { $t2->get('/syn/', 'X-Key' => $key{session}) } 1 .. 4), '200 200 200 200',
    'sync on the second instance passes');
ok(Throttle::Redis::wait_for(sub { $redis->sum(Throttle::Redis::zone_base('syn', $key{session}) . ':*') == 5 }),
    'sync: the second instance flushed under the same name (1 + 4 = 5)');
# The first instance learns the global count at its next flush of the key: after its n-th
# request here it has counted 1 + n itself, and 5 + n once it knows the second's 4.
my ($seen, $n) = (undef, 0);
ok(Throttle::Redis::wait_for(sub {
    my $r = $t1->get('/syn/', 'X-Key' => $key{session});
    $n++;
    $seen = $r->{headers}{'x-remaining'};
    defined $seen && $seen + $n <= 95;
}, step => 0.1, timeout => 8), 'sync converges: the first instance counts the second\'s requests')
    or diag "remaining $seen after $n requests";
$t2->stop;

# --- another secret (read from a file, trailing newline stripped): other names, own counts
my $t3 = Throttle::Test->new(workers => 2);
$t3->write_file('secret', "$S2\n");
$t3->write_conf(conf_with('throttle_secret file=%%TESTDIR%%/secret;'))->run;
is(statuses(map { $t3->get('/str/', 'X-Key' => $key{session}) } 1 .. 3), '200 200 200',
    'another secret: the exhausted key passes (its counts are not shared)');
is($redis->sum(Throttle::Redis::zone_base('str', $key{session}, secret => $S2) . ':*'), 3,
    'another secret: counted under the name that secret gives (the file\'s newline not in it)');
is($redis->sum(Throttle::Redis::zone_base('str', $key{session}) . ':*'), 10,
    'another secret: the first secret\'s count is untouched');
$t3->stop;

# --- a reload keeps counts; a changed secret starts them over
my $loc3 = <<'EOF';
http {
    SECRET_LINE
    throttle_zone $http_x_key zone=nos:1m rate=3r/h;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { throttle zone=nos; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF
sub loc3 { (my $c = $loc3) =~ s/SECRET_LINE/$_[0]/; $c }
my $t4 = Throttle::Test->new(workers => 2);
$t4->write_conf(loc3(''))->run;
is(statuses(map { $t4->get('/', 'X-Key' => $key{session}) } 1 .. 2), '200 200',
    'local zone without a secret: 2 pass');
$shm = shm_bytes($t4->pid);
SKIP: {
    skip 'cannot read /proc/PID/mem', 2 unless defined $shm && length $shm;
    ok(index($shm, $key{session}) < 0, 'local zone without a secret: the key is not in shm');
    ok(index($shm, pack('H*', Throttle::Redis::zone_digest('nos', $key{session}))) < 0,
        'nor its digest under the test secret (the zone made its own)');
}
ok($t4->reload, 'reload, same configuration');
is(statuses(map { $t4->get('/', 'X-Key' => $key{session}) } 1 .. 2), '200 429',
    'reload: the zone\'s own secret and counts kept (the third passes, the fourth not)');
my $mark = $t4->log_mark;
$t4->write_conf(loc3("throttle_secret $S;"));
ok($t4->reload, 'reload with throttle_secret');
like($t4->log_since($mark), qr/\[notice\].*throttle_zone "nos" changed its secret, its counts start over/,
    'a changed secret is logged');
is(statuses(map { $t4->get('/', 'X-Key' => $key{session}) } 1 .. 4), '200 200 200 429',
    'changed secret: the counts started over');
$mark = $t4->log_mark;
ok($t4->reload, 'reload, same secret');
unlike($t4->log_since($mark), qr/changed its secret/, 'same secret: nothing logged');
is($t4->get('/', 'X-Key' => $key{session})->{status}, 429, 'same secret: counts kept');
$t4->stop;

# --- nginx -t
sub fails_with {
    my ($name, $c, $want) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my ($ok, $out) = $t1->nginx_t($c);
    ok(!$ok, "$name: nginx -t fails");
    my ($line) = grep { /\[emerg\]/ } split /\n/, $out;
    like($line // $out, $want, "$name: message");
    my ($msg) = ($line // '') =~ /\[emerg\] (?:\d+#\d+: )?(.*?)(?: in \S+:\d+)?$/;
    ok(defined $msg && $msg =~ /^["a-z]/ && $msg !~ /\.$/, "$name: lowercase, no final period")
        or diag $out;
}
sub zone_conf {
    my ($lines, $params) = @_;
    return $redis->fill(<<"EOF");
http {
    throttle_redis %%REDIS%%;
    $lines
    throttle_zone \$http_x_key zone=z:1m rate=1r/s $params;
    server { listen 127.0.0.1:%%PORT%%; location / { throttle zone=z; } }
}
EOF
}
$t1->write_file('short', "0123456789abcde\n");    # 15 bytes and a newline
$t1->write_file('good', "0123456789abcdef\r\n");
$t1->write_file('large', 'x' x 5000);
fails_with('sync without throttle_secret', zone_conf('', 'mode=sync'),
    qr/throttle_zone "z" has "mode=sync" but "throttle_secret" is not set.*set "throttle_secret" \(the same on every host\)/);
fails_with('strict without throttle_secret', zone_conf('', 'mode=strict'),
    qr/throttle_zone "z" has "mode=strict" but "throttle_secret" is not set/);
fails_with('secret of 15 bytes', zone_conf('throttle_secret 0123456789abcde;', ''),
    qr/"throttle_secret" must be at least 16 bytes long/);
fails_with('secret file of 15 bytes and a newline', zone_conf('throttle_secret file=%%TESTDIR%%/short;', ''),
    qr/"throttle_secret" must be at least 16 bytes long/);
fails_with('secret file missing', zone_conf('throttle_secret file=%%TESTDIR%%/nope;', ''),
    qr/open\(\) "[^"]*\/nope" failed/);
fails_with('secret file too large', zone_conf('throttle_secret file=%%TESTDIR%%/large;', ''),
    qr/secret file "[^"]*\/large" is larger than 4096 bytes/);
fails_with('empty file name', zone_conf('throttle_secret file=;', ''),
    qr/invalid file "" in "throttle_secret"/);
fails_with('throttle_secret twice', zone_conf("throttle_secret $S; throttle_secret $S;", ''),
    qr/"throttle_secret" directive is duplicate/);
fails_with('throttle_secret and its alias', zone_conf("throttle_secret $S; throttle_cache_secret $S;", ''),
    qr/"throttle_cache_secret" is duplicate: "throttle_secret" already set the secret/);
fails_with('the alias, then throttle_secret', zone_conf("throttle_cache_secret $S; throttle_secret $S2;", ''),
    qr/"throttle_secret" is duplicate: "throttle_cache_secret" already set the secret/);
my ($ok, $out) = $t1->nginx_t(zone_conf('throttle_secret file=%%TESTDIR%%/good;', 'mode=strict'));
ok($ok, 'a 16-byte secret file ending in CRLF passes with a strict zone') or diag $out;
($ok, $out) = $t1->nginx_t(zone_conf("throttle_cache_secret $S;", 'mode=sync'));
ok($ok, 'throttle_cache_secret alone keys the zones too') or diag $out;

$t1->done;
