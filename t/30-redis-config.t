#!/usr/bin/perl
# throttle_redis and the Redis parameters of throttle_zone: bad values fail `nginx -t` with an
# nginx-style message; a good configuration passes even with Redis down (nothing connects at
# configuration time). Then the secrets: a Redis started with --requirepass (and an ACL user)
# is reached with password=, password_env=, password_file= and username=, on TCP and on a
# unix socket, with db= and prefix= honoured; a wrong password leaves requests answered by
# the local fallback and is logged once per incident, not once per request.

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;

my $t = Throttle::Test->new(workers => 2);

my $env_name = "THROTTLE_TEST_NOPE_$$";
delete $ENV{$env_name};

# [name, throttle_redis line (or ''), throttle_zone parameters, expected message]
my $zone = 'throttle_zone $binary_remote_addr zone=a:1m rate=10r/m';
my $redis = 'throttle_redis 127.0.0.1:1';
my @cases = (
    ['bad port',           'throttle_redis 127.0.0.1:99999;', '',
        qr/invalid address "127\.0\.0\.1:99999"/],
    ['empty unix path',    'throttle_redis unix:;', '',
        qr/invalid address "unix:"/],
    ['db not a number',    "$redis db=x;", '',            qr/invalid db "db=x"/],
    ['db negative',        "$redis db=-1;", '',           qr/invalid db "db=-1"/],
    ['timeout=0',          "$redis timeout=0;", '',       qr/invalid timeout "timeout=0"/],
    ['timeout=abc',        "$redis timeout=abc;", '',     qr/invalid timeout "timeout=abc"/],
    ['connect_timeout=0',  "$redis connect_timeout=0;", '', qr/invalid timeout "connect_timeout=0"/],
    ['unknown parameter',  "$redis foo=1;", '',           qr/invalid parameter "foo=1"/],
    ['prefix with a brace', qq[$redis "prefix=a{b:";], '', qr/invalid prefix "prefix=a\{b:": no braces/],
    # The message says both ways out: pass the variable (and keep it with `env NAME;`), or
    # start without a password.
    ['password_env unset', "$redis password_env=$env_name;", '',
        qr/environment variable in "password_env=$env_name" is not set: export $env_name to nginx .*list it in an "env $env_name;" directive, or remove "password_env=" to connect to Redis without a password(?: in \S+)?$/],
    ['password_env empty', "$redis password_env=;", '',
        qr/invalid password_env "password_env=": no variable name/],
    ['password_file missing', "$redis password_file=/nonexistent;", '',
        qr/cannot read "password_file=\/nonexistent"/],
    ['username alone',     "$redis username=u;", '',      qr/"username" requires a password/],
    ['duplicate',          "$redis;\n    $redis;", '',     qr/"throttle_redis" directive is duplicate/],
    ['unknown mode',       $redis, 'mode=x',              qr/invalid mode "mode=x"/],
    ['sync interval 5ms',  $redis, 'mode=sync sync=5ms',
        qr/invalid sync interval "sync=5ms" \(10ms at least\)/],
    ['sync without mode',  $redis, 'sync=1s',             qr/"sync=1s" requires "mode=sync"/],
    ['sync with strict',   $redis, 'mode=strict sync=1s', qr/"sync=1s" requires "mode=sync"/],
    ['sync with gcra',     $redis, 'mode=sync algorithm=gcra',
        qr/"mode=sync" requires "algorithm=sliding"/],
    ['unknown fallback',   $redis, 'mode=strict fallback=x', qr/invalid fallback "fallback=x"/],
    # fallback= is what a strict zone does without Redis: local and sync zones have none.
    ['fallback on a sync zone', $redis, 'mode=sync fallback=closed',
        qr/"fallback=closed" requires "mode=strict"/],
    ['fallback on a local zone', $redis, 'fallback=open', qr/"fallback=open" requires "mode=strict"/],
    # A parameter given twice is refused (it used to be: the last one won).
    ['two modes',          $redis, 'mode=strict mode=local', qr/"mode" is duplicate/],
    ['two fallbacks',      $redis, 'mode=strict fallback=open fallback=closed',
        qr/"fallback" is duplicate/],
    ['two timeouts',       "$redis timeout=10ms timeout=20ms;", '', qr/"timeout" is duplicate/],
    ['two dbs',            "$redis db=1 db=2;", '',        qr/"db" is duplicate/],
    ['password twice',     "$redis password=a password_file=/etc/hostname;", '',
        qr/"password" is duplicate/],
    ['timeout over 60s',   "$redis timeout=61s;", '',     qr/invalid timeout "timeout=61s"/],
    ['sentinel, no address', "throttle_redis sentinel=mymaster timeout=1s;", '',
        qr/"sentinel=mymaster" requires the address of at least one sentinel/],
    ['sentinel, empty name', "throttle_redis sentinel= 127.0.0.1:26379;", '',
        qr/invalid master name in "sentinel=": empty/],
    ['sentinel, bad address', "throttle_redis sentinel=mymaster 127.0.0.1:26379 127.0.0.1:99999;",
        '', qr/invalid address "127\.0\.0\.1:99999"/],
    ['sentinel_password alone', "$redis sentinel_password=x;", '',
        qr/invalid parameter "sentinel_password=x"/],
);

sub conf {
    my ($redis_line, $zone_line, $loc) = @_;
    $loc //= 'throttle zone=a;';
    return <<"EOF";
http {
    throttle_secret test-secret-0123456789abcdef;
    $redis_line
    $zone_line
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { $loc }
    }
}
EOF
}

sub fails_with {
    my ($name, $conf, $want) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my ($ok, $out) = $t->nginx_t($conf);
    ok(!$ok, "$name: nginx -t fails");
    my ($line) = grep { /\[emerg\]/ && $_ !~ /open\(\) .* failed/ } split /\n/, $out;
    like($line // $out, $want, "$name: message");
    my ($msg) = ($line // '') =~ /\[emerg\] (.*?)(?: in \S+:\d+)?$/;
    ok(defined $msg && $msg =~ /^["a-z]/ && $msg !~ /\.$/, "$name: lowercase, no final period")
        or diag $out;
}

for my $c (@cases) {
    my ($name, $redis_line, $params, $want) = @$c;
    fails_with($name, conf($redis_line =~ /;$/ ? $redis_line : "$redis_line;",
        "$zone $params;"), $want);
}

fails_with('rate too large for strict', conf("$redis;",
    'throttle_zone $binary_remote_addr zone=a:1m rate=1000000000r/d mode=strict;'),
    qr/rate too large for "mode=strict"/);

# A remote zone needs throttle_redis.
for my $mode (qw(sync strict)) {
    my ($ok, $out) = $t->nginx_t(conf('', "throttle_zone \$binary_remote_addr zone=n$mode:1m "
        . "rate=10r/m mode=$mode;", "throttle zone=n$mode;"));
    ok(!$ok, "mode=$mode without throttle_redis: nginx -t fails");
    like($out, qr/throttle_zone "n$mode" has "mode=$mode" but "throttle_redis" is not configured/,
        "mode=$mode without throttle_redis: message names the zone");
}

# Good configurations pass, with nothing listening at the Redis address.
$ENV{THROTTLE_TEST_REDIS_PW} = 'secret';
$t->write_file('redis.pw', "secret\r\nsecond line\n");
my ($ok, $out) = $t->nginx_t(<<'EOF');
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis 127.0.0.1:1 db=15 username=u password_env=THROTTLE_TEST_REDIS_PW
                   prefix=app:rl: connect_timeout=100ms timeout=20ms;
    throttle_zone $binary_remote_addr zone=l:1m rate=10r/m;
    throttle_zone $binary_remote_addr zone=m:1m rate=10r/m mode=local;
    throttle_zone $binary_remote_addr zone=s:1m rate=10r/m mode=sync;
    throttle_zone $binary_remote_addr zone=t:1m rate=10r/m mode=sync sync=250ms;
    throttle_zone $binary_remote_addr zone=u:1m rate=5r/m  mode=strict fallback=closed;
    throttle_zone $binary_remote_addr zone=v:1m rate=5r/m  mode=strict algorithm=gcra burst=2;
    throttle_zone $binary_remote_addr zone=w:1m rate=1000000r/s mode=strict fallback=local;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / { throttle zone=l; throttle zone=m; throttle zone=s; throttle zone=t;
                     throttle zone=u; throttle zone=v; throttle zone=w; }
    }
}
EOF
ok($ok, 'a good configuration passes nginx -t with Redis down') or diag $out;
for my $addr ('localhost:1', '127.0.0.1', 'unix:/nonexistent/redis.sock') {
    ($ok, $out) = $t->nginx_t(conf("throttle_redis $addr password_file=%%TESTDIR%%/redis.pw;",
        'throttle_zone $binary_remote_addr zone=a:1m rate=10r/m mode=strict;'));
    ok($ok, "address $addr passes nginx -t") or diag $out;
}
($ok, $out) = $t->nginx_t(conf('throttle_redis sentinel=mymaster 127.0.0.1:1 localhost:2 '
        . 'unix:/nonexistent/s.sock sentinel_password=x timeout=1s;',
    'throttle_zone $binary_remote_addr zone=a:1m rate=10r/m mode=strict;'));
ok($ok, 'sentinel=NAME with three addresses passes nginx -t') or diag $out;

# --- a Redis that wants a password; alice is an ACL user with her own
my $r = Throttle::Redis->new(t => $t, password => 'secret', unixsocket => 1,
    users => ['alice on >alicepw ~* &* +@all']);
is($r->cli('PING'), 'PONG', 'redis with requirepass answers the harness');

my $app = <<'EOF';
http {
    throttle_secret test-secret-0123456789abcdef;
    REDIS_LINE
    throttle_zone $http_x_key zone=s:1m rate=3r/h mode=strict;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Status $throttle_status always;
        location / { throttle zone=s; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF

# Each variant: [name, throttle_redis line, key pattern, db]
my @variants = (
    ['password_env',  'throttle_redis %%REDIS%% password_env=THROTTLE_TEST_REDIS_PW;',
        Throttle::Redis::zone_base('s', 'env') . ':*', undef],
    ['password_file', 'throttle_redis %%REDIS%% password_file=%%TESTDIR%%/redis.pw;',
        Throttle::Redis::zone_base('s', 'file') . ':*', undef],
    ['password=',     'throttle_redis %%REDIS%% password=secret;', Throttle::Redis::zone_base('s', 'inline') . ':*',
        undef],
    ['username=',     'throttle_redis %%REDIS%% username=alice password=alicepw;',
        Throttle::Redis::zone_base('s', 'acl') . ':*', undef],
    ['unix socket, db and prefix',
        'throttle_redis unix:%%REDIS_SOCKET%% password=secret db=3 prefix=app:rl:;',
        Throttle::Redis::zone_base('s', 'unix', prefix => 'app:rl:') . ':*', 3],
);
my %key = ('password_env' => 'env', 'password_file' => 'file', 'password=' => 'inline',
    'username=' => 'acl', 'unix socket, db and prefix' => 'unix');

for my $v (@variants) {
    my ($name, $line, $pattern, $db) = @$v;
    (my $c = $app) =~ s/REDIS_LINE/$r->fill($line)/e;
    $t->write_conf($c)->run;
    my @st = map { $t->get('/', 'X-Key' => $key{$name}) } 1 .. 4;
    is(join(' ', map { "$_->{status}:" . ($_->{headers}{'x-status'} // '') } @st),
        '200:PASSED 200:PASSED 200:PASSED 429:REJECTED', "$name: decided by Redis");
    is($r->sum($pattern, db => $db), 3, "$name: Redis counted 3 under $pattern"
        . (defined $db ? " in db $db" : ''));
    $t->stop;
}
is(scalar(() = $r->keys('*')), 4, 'db 0 holds only the four TCP variants\' keys');

# --- a wrong password: requests are answered from the local zone; logged once per incident
$t->allow(qr/\[error\].*throttle_redis: redis 127\.0\.0\.1:\d+: /);
my $mark = $t->log_mark;
(my $c = $app) =~ s/REDIS_LINE/$r->fill('throttle_redis %%REDIS%% password=wrong timeout=50ms;')/e;
$t->write_conf($c)->run;
my @st = map { $t->get('/', 'X-Key' => 'wrong') } 1 .. 20;
is(join(' ', map { $_->{status} } @st), join(' ', ('200') x 3, ('429') x 17),
    'wrong password: the local zone still limits (3 pass, 17 rejected)');
is(scalar(grep { ($_->{headers}{'x-status'} // '') =~ /^(?:PASSED|REJECTED)_FALLBACK$/ } @st),
    20, 'wrong password: every request shows a *_FALLBACK status');
is($r->sum(Throttle::Redis::zone_base('s', 'wrong') . ':*'), 0, 'wrong password: nothing reached Redis');
my @err = $t->log_lines(qr/\[error\].*throttle_redis: redis 127\.0\.0\.1:${\ $r->port}: /, $mark);
ok(@err >= 1, 'wrong password: the error is logged') or diag $t->log_since($mark);
like($err[0] // '', qr/WRONGPASS|invalid username-password|auth/i, 'the log line says why');
# per worker: the cause, and the circuit opening after 3 consecutive failures
ok(@err <= 2 * 2, 'logged once per incident and worker, not per request (' . scalar(@err) . ' lines)')
    or diag join "\n", @err;
$t->stop;

$t->done;
