#!/usr/bin/perl
# throttle_cache_local when pub/sub or Redis fails (issue 13), one nginx with 2 workers:
#   - the fill channel's connections killed (CLIENT KILL TYPE pubsub) and, meanwhile, a purge
#     whose message nobody hears (the generation moved in Redis directly): the tier is bypassed
#     until the subscribers are back, and no read shows the purged entry after that; then
#     local hits again, with the new content;
#   - Redis paused (SIGSTOP): no 5xx, no request hangs; local entries are served while Redis
#     cannot answer, only the entry stored before the pause, and once their local age (ttl)
#     is over reads go upstream and never come back to the old entry while Redis stays down;
#   - Redis killed: the same; restarted: the tier works again.
use strict;
use warnings;
use Test::More;
use Time::HiRes qw(time sleep);
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 2);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_redis %%REDIS%% timeout=100ms;
    throttle_secret test-secret-0123456789abcdef;
    throttle_cache_valid 200 60s;
    throttle_cache_local zone=hot:1m ttl=3s;

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Cache $throttle_cache_status always;
        add_header X-Tier $throttle_cache_tier always;
        location /a/ { throttle_cache a; proxy_pass http://%%APP%%; }
        location = /metrics { throttle_metrics; }
    }
}
EOF
$t->allow(qr/throttle_redis|fill channel|throttle_cache/);

sub xc   { $_[0]{headers}{'x-cache'} // '' }
sub tier { $_[0]{headers}{'x-tier'} // '' }
sub n_of { (Throttle::App::parse_body($_[0]{body}) // {})->{n} // -1 }

sub until_local {
    my ($path, $timeout) = @_;
    my $r;
    Throttle::Redis::wait_for(sub { $r = $t->get($path); tier($r) eq 'local' },
        timeout => $timeout // 15,
        step => 0.01);
    return $r;
}

# ---------------------------------------------------------------------------------------
# The subscribers killed, a purge's message lost meanwhile.
{
    my $path = '/a/sub';
    $t->get($path);
    my $r = until_local($path);
    is(tier($r), 'local', 'warm: a local hit');
    my $old = n_of($r);

    $redis->cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
    # A purge nobody hears: the namespace generation moves in Redis, no message.
    $redis->cli('INCR', 'throttle:cache:{a}:g');
    my ($stale, $reads, $bypassed) = (0, 0, 0);
    my $back = Throttle::Redis::wait_for(sub {
        my $x = $t->get($path);
        $reads++;
        $stale++ if n_of($x) == $old && tier($x) eq 'local';
        $bypassed++ if tier($x) eq 'redis';
        return tier($x) eq 'local' && n_of($x) > $old;
    }, timeout => 15, step => 0.005);
    ok($back, 'local hits again once resubscribed, with new content');
    is($stale, 0, "no read served the purged entry from the local tier ($reads reads)");
    cmp_ok($bypassed, '>', 0, 'reads went to Redis meanwhile');
    like($t->get('/metrics')->{body},
        qr/^nginx_throttle_cache_local_untrusted_total\{namespace="a"\} [1-9]\d*$/m,
        'untrusted lookups counted');
}

# ---------------------------------------------------------------------------------------
# Redis down: local entries served up to their local age, then upstream; no 5xx, no hang.
sub outage {
    my ($what, $down, $up) = @_;
    my $path = "/a/$what";
    $t->get($path);
    my $r = until_local($path);
    is(tier($r), 'local', "$what: warm");
    my $old = n_of($r);
    $down->();
    my (%status, $local, $upstream, $wrong, $back_to_local, $max_elapsed);
    ($local, $upstream, $wrong, $back_to_local, $max_elapsed) = (0, 0, 0, 0, 0);
    # Read until upstream answers twice in a row past the ttl, at most 20 s.
    my $after_upstream = 0;
    my @seq;
    my $t0 = time;
    Throttle::Redis::wait_for(sub {
        my $start = time;
        my $x = $t->get($path);
        my $el = time - $start;
        $max_elapsed = $el if $el > $max_elapsed;
        $status{ $x->{status} }++;
        push @seq, sprintf('%.3f %s/%s n=%d', time - $t0, xc($x), tier($x), n_of($x));
        if (tier($x) eq 'local') {
            $local++;
            $wrong++ if n_of($x) != $old;
            $after_upstream = 0;
        } elsif ($x->{status} == 200) {
            $upstream++;
            # Redis known down and no usable local entry: upstream at once. (A single BYPASS
            # may also be a lookup the breaker refused while the entry was still usable.)
            $after_upstream = xc($x) eq 'BYPASS' ? $after_upstream + 1 : 0;
        }
        return $after_upstream >= 20;
    }, timeout => 20, step => 0.02);
    # Past its local age the entry is gone for good while Redis stays down.
    for (1 .. 20) {
        my $x = $t->get($path);
        $status{ $x->{status} }++;
        $back_to_local++ if tier($x) eq 'local';
    }
    is_deeply([keys %status], [200], "$what: every read answered 200")
        or diag(explain(\%status));
    cmp_ok($local, '>', 0, "$what: the local entry was served while Redis could not answer");
    is($wrong, 0, "$what: only the entry stored before the outage");
    cmp_ok($after_upstream, '>=', 20, "$what: then reads went upstream (BYPASS)");
    is($back_to_local, 0, "$what: past its local age the entry was never served again")
        or diag(join "\n", @seq);
    diag(sprintf '%s: %d local hits, %d upstream answers, slowest read %.0f ms', $what, $local,
        $upstream, $max_elapsed * 1000);
    $up->();
    my $again = until_local($path, 60);    # the breaker's cool-down doubles while Redis is down
    is(tier($again), 'local', "$what: Redis back, local hits again")
        or diag(xc($again) . ' ' . join('', grep { /subscri|fill channel/ } split /^/, $t->error_log));
}

outage('paused', sub { $redis->pause }, sub { $redis->resume });
outage('killed', sub { $redis->kill }, sub { $redis->start });

is(scalar($t->worker_pids), 2, 'both workers alive');
$t->log_unlike(qr/exited on signal/, 'no worker crashed');
$t->done;
