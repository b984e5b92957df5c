#!/usr/bin/perl
# A Redis ACL user that may not do what the module's scripts do. Each user below lacks one
# thing: EVALSHA, SCRIPT LOAD, the module's keys, the cache's pub/sub channel, one command a
# script calls. The module asks Redis on every connect (a probe script calling
# redis.acl_check_cmd with each command line the scripts run): before any request, the error
# log names the user and exactly what is refused, once per incident and worker; requests are
# decided by the fallback (strict) or go upstream (cache), none waits past the timeout and
# nothing reaches Redis. A user with exactly the documented permissions works: strict
# decisions are made by Redis and the cache stores and hits.

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 2);
my $app = Throttle::App->new(t => $t)->start;

# The permissions README.md documents for a user of its own.
my $minimal = '~throttle:* &throttle:* -@all +evalsha +script|load +ping +subscribe '
    . '+get +mget +exists +set +incr +incrby +pexpire +pexpireat +del +publish +time';
my %users = (
    minimal  => "$minimal",
    noeval   => '~* &* +@all -evalsha',
    noscript => '~* &* +@all -script',
    otherkeys => '~app:* &* +@all',
    nochannel => '~* resetchannels +@all',
    noincrby => '~* &* +@all -incrby',
);
my $r = Throttle::Redis->new(t => $t,
    users => [map { "$_ on >pw-$_ $users{$_}" } sort keys %users]);

my $conf = <<'EOF';
http {
    throttle_redis %%REDIS%% username=USER password=pw-USER timeout=200ms;
    throttle_cache_secret test-secret-0123456789abcdef;
    throttle_zone $http_x_key zone=s:1m rate=3r/h mode=strict;
    proxy_http_version 1.1;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Status $throttle_status always;
        add_header X-Cache $throttle_cache_status always;
        location /strict { throttle zone=s; proxy_pass http://127.0.0.1:%%APP_PORT%%; }
        location /cached/ {
            throttle_cache acl;
            throttle_cache_valid 200 60s;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
    }
}
EOF

sub start_as {
    my ($user) = @_;
    (my $c = $conf) =~ s/USER/$user/g;
    $t->write_conf($r->fill($c))->run;
}

sub strict_statuses {
    my ($key) = @_;
    return join ' ', map {
        my $res = $t->get('/strict', 'X-Key' => $key);
        "$res->{status}:" . ($res->{headers}{'x-status'} // '');
    } 1 .. 4;
}

# --- the minimal user: Redis decides, the cache stores and hits
start_as('minimal');
is(strict_statuses('minimal'), '200:PASSED 200:PASSED 200:PASSED 429:REJECTED',
    'minimal permissions: strict decisions made by Redis');
is($r->sum(Throttle::Redis::zone_base('s', 'minimal') . ':*'), 3, 'minimal permissions: Redis counted 3');
my $first = $t->get('/cached/m');
my $hit = Throttle::Redis::wait_for(sub {
    ($t->get('/cached/m')->{headers}{'x-cache'} // '') eq 'HIT'
}, timeout => 10);
ok($hit, 'minimal permissions: the cache stores and hits');
is(scalar($t->log_lines(qr/may not run|permission check/)), 0,
    'minimal permissions: no permission is reported missing');
$t->stop;

# --- each user that lacks something
$t->allow(qr/\[error\].*throttle_redis: redis 127\.0\.0\.1:\d+: /);
my @cases = (
    ['noeval',    qr/user "noeval" may not run EVALSHA .*NOPERM/],
    ['noscript',  qr/SCRIPT LOAD failed: NOPERM.*script\|load/],
    ['otherkeys', qr/user "otherkeys" may not run "(?:GET|MGET|EXISTS|SET|INCRBY|INCR|DEL|PEXPIRE|PEXPIREAT) throttle:\{probe:probe\}:0/],
    ['nochannel', qr/user "nochannel" may not run .*"PUBLISH throttle:cache[^"]*".*"SUBSCRIBE throttle:/],
    ['noincrby',  qr/user "noincrby" may not run "INCRBY throttle:\{probe:probe\}:0 1"/],
);
for my $case (@cases) {
    my ($user, $want) = @$case;
    my $mark = $t->log_mark;
    start_as($user);
    # No request yet: the workers connected on start, the check ran then.
    my $said = Throttle::Redis::wait_for(sub {
        scalar $t->log_lines(qr/\[error\].*throttle_redis: .*\Q$user\E|\[error\].*SCRIPT LOAD failed/, $mark)
    }, timeout => 15);
    ok($said, "$user: reported before any request");
    my @lines = $t->log_lines(qr/\[error\].*throttle_redis: /, $mark);
    ok((grep { $_ =~ $want } @lines), "$user: the log names what is refused")
        or diag join "\n", @lines;

    if ($user ne 'nochannel') {  # the strict scripts publish nothing
        my $got = strict_statuses($user);
        like($got, qr/^(?:\d+:(?:PASSED|REJECTED)_FALLBACK ?){4}$/,
            "$user: strict requests are decided by the fallback") or diag $got;
        is($r->sum(Throttle::Redis::zone_base('s', $user) . ':*'), 0, "$user: nothing counted in Redis");
    }
    my @cached = map { $t->get('/cached/x') } 1 .. 3;
    is(join(' ', map { $_->{status} } @cached), '200 200 200', "$user: cached location answered");
    unlike(join(' ', map { $_->{headers}{'x-cache'} // '' } @cached), qr/HIT/,
        "$user: nothing served from the cache");

    # Once per incident and worker: the first failure, the circuit opening, a probe or two.
    my @errs = $t->log_lines(qr/\[error\].*throttle_redis: /, $mark);
    ok(@errs <= 2 * 3, "$user: logged per incident, not per request (" . scalar(@errs) . ')')
        or diag join "\n", @errs;
    $t->stop;
}

$t->done;
