#!/usr/bin/perl
# throttle_redis sentinel=NAME ADDRESS... (issue 12): before each connect the worker asks the
# Sentinels, in order, for the primary's address. A primary, its replica and three Sentinels
# (quorum 2), the first address in the list a dead one: strict decisions come from the primary;
# after SENTINEL FAILOVER the old primary's connection answers READONLY or drops, the reconnect
# asks the Sentinels again (or the +switch-master message moves it first), and strict decisions
# come from the new primary; after kill -9 of that one, from the old primary the Sentinels
# promote. No 5xx at any time, no worker crash. (t/49: the same under load.)

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;

my $primary = Throttle::Redis->new;
my $replica = Throttle::Redis->new(replicaof => $primary);
my @sconf = ('sentinel down-after-milliseconds mymaster 500',
    'sentinel failover-timeout mymaster 2000');
my @sentinels = map { Throttle::Redis->new(sentinel => $primary, quorum => 2,
        sentinel_conf => \@sconf) } 1 .. 3;
my $dead = Throttle::Redis::_free_port();    # nothing listens there

my $list = join ' ', "127.0.0.1:$dead", map { $_->address } @sentinels;
my $conf = <<"CONF";
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis sentinel=mymaster $list timeout=1s connect_timeout=200ms;
    throttle_zone \$http_x_key zone=s:1m rate=100000r/h mode=strict;

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Status \$throttle_status always;
        location /s/ { throttle zone=s; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\\n"; }
    }
}
CONF

my $t = Throttle::Test->new(workers => 1);
$t->allow(qr/\[error\].*throttle_redis: /);
$t->write_conf($conf)->run;
my ($worker) = $t->worker_pids;

my @statuses;
my $seq = 0;
sub strict_one {
    my $r = $t->get('/s/', 'X-Key' => 'k' . $seq++);
    push @statuses, $r->{status};
    return $r->{headers}{'x-status'} // '';
}
sub evalsha { $_[0]->info_commandstats->{evalsha} // 0 }

my $last = '';
ok(Throttle::Redis::wait_for(sub { ($last = strict_one()) eq 'PASSED' }, timeout => 10, step => 0.1),
    'strict decisions come from Redis (the primary named by a Sentinel)') or diag("$last\n" . join "\n", $t->log_lines(qr/throttle/));
cmp_ok(evalsha($primary), '>', 0, 'EVALSHA reaches the primary');
is(evalsha($replica), 0, 'none reaches the replica');

# A failover, forced on one Sentinel (it needs no agreement); it may answer NOGOODSLAVE until
# the Sentinel has seen the replica: poll.
my $answer = '';
ok(Throttle::Redis::wait_for(sub {
        $answer = eval { $sentinels[0]->cli('SENTINEL', 'FAILOVER', 'mymaster') } // '';
        $answer eq 'OK';
    }, timeout => 30, step => 0.2), 'SENTINEL FAILOVER accepted') or diag $answer;
ok(Throttle::Redis::wait_for(sub {
        (eval { $replica->cli('ROLE') } // '') =~ /^master/;
    }, timeout => 30, step => 0.1), 'the replica is the new primary');
my $rport = $replica->port;
ok(Throttle::Redis::wait_for(sub {
        (eval { $sentinels[1]->cli('SENTINEL', 'get-master-addr-by-name', 'mymaster') } // '')
            =~ /\b$rport\b/;
    }, timeout => 30, step => 0.1), 'the Sentinels name it');

my $before = evalsha($replica);
ok(Throttle::Redis::wait_for(sub {
        strict_one() eq 'PASSED' && evalsha($replica) > $before;
    }, timeout => 60, step => 0.1), 'strict decisions come from the new primary');
my @after = map { strict_one() } 1 .. 20;
is(scalar(grep { $_ eq 'PASSED' } @after), 20, 'and keep coming from it')
    or diag join ',', @after;
cmp_ok(evalsha($replica), '>=', $before + 20, 'EVALSHA reaches the new primary');

# kill -9 of the new primary: the Sentinels (quorum 2) agree it is down and promote the old
# primary, a replica of it by now; the worker falls back meanwhile, then finds it.
my $pport = $primary->port;
ok(Throttle::Redis::wait_for(sub {
        (eval { $primary->cli('ROLE') } // '') =~ /^slave\n127\.0\.0\.1\n$rport\n/;
    }, timeout => 30, step => 0.1), 'the old primary replicates the new one');
$replica->kill;
ok(Throttle::Redis::wait_for(sub {
        strict_one();
        (eval { $primary->cli('ROLE') } // '') =~ /^master/;
    }, timeout => 60, step => 0.1), 'killed: the Sentinels promote the old primary');
my $again = evalsha($primary);
ok(Throttle::Redis::wait_for(sub {
        strict_one() eq 'PASSED' && evalsha($primary) > $again;
    }, timeout => 60, step => 0.1), 'killed: strict decisions come from the promoted primary');

is(scalar(grep { $_ >= 500 } @statuses), 0, 'no 5xx at any time');
is(join(',', $t->worker_pids), $worker, 'no worker crash');
$t->finish;

# No Sentinel answers: the attempt fails, logged once per incident, strict falls back.
my $t2 = Throttle::Test->new(workers => 1);
$t2->allow(qr/\[error\].*throttle_redis: /);
my $dead2 = Throttle::Redis::_free_port();
(my $conf2 = $conf) =~ s/sentinel=mymaster [^;]*? timeout/sentinel=mymaster 127.0.0.1:$dead2 timeout/;
$conf2 =~ s/(    throttle_zone )/    throttle_cache_user \$cookie_sessionid;\n    throttle_cache_valid 60s;\n$1/;
$conf2 =~ s{(        location /s/ )}{        location /c/ { throttle_cache c; proxy_pass http://127.0.0.1:%%PORT_2%%; }\n$1};
$t2->write_conf($conf2)->run;
my @r = map { $t2->get('/s/', 'X-Key' => "n$_") } 1 .. 10;
is(scalar(grep { $_->{status} == 200 && ($_->{headers}{'x-status'} // '') eq 'PASSED_FALLBACK' } @r),
    10, 'no Sentinel: strict requests fall back');
ok(Throttle::Redis::wait_for(sub {
        $t2->log_lines(qr/\[error\].*no Sentinel named the primary of "mymaster" \(127\.0\.0\.1:$dead2: /);
    }), 'no Sentinel: the error log says so');
cmp_ok(scalar($t2->log_lines(qr/\[error\].*no Sentinel named/)), '<=', 1,
    'no Sentinel: once per incident');
# The Sentinel watch (+switch-master) cannot subscribe either: one error line per incident.
ok(Throttle::Redis::wait_for(sub {
        $t2->log_lines(qr/\[error\].*throttle_redis: sentinel watch "mymaster": redis 127\.0\.0\.1:$dead2 subscriber: cannot connect/);
    }), 'no Sentinel: the watch says it cannot subscribe');
# The response cache's fill channel waits for the primary's address (t/49 follows it).
$t2->get('/s/', 'X-Key' => 'last');
is(scalar($t2->log_lines(qr/\[error\].*sentinel watch/)), 1, 'no Sentinel: the watch says it once');
is(scalar($t2->log_lines(qr/no fill channel|fill channel: subscribing/)), 0,
    'no Sentinel: the fill channel waits for a primary, quietly');
$t2->finish;

done_testing;
