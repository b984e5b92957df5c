#!/usr/bin/perl
# Zone metrics (issue 11), exact across two workers: what every zone did with each client
# request (nginx_throttle_requests_total by outcome: passed, rejected, dry_run_*,
# fallback_* and skipped for an empty key), near_limit, evictions of live keys, strict
# decisions and their batches, sync flushes; the same numbers in the Prometheus text and in
# JSON; and across a reload, a kept zone keeps its counters while a new one starts at 0.
# Every number asserted follows from the requests sent; nothing is asserted about time.

use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Throttle::Test;
use Throttle::Redis;

my $t = Throttle::Test->new(workers => 2)->need_fds(400);
my $redis = Throttle::Redis->new(t => $t);

my $zones = <<'EOF';
    throttle_zone $http_x_key zone=loc:1m   rate=5r/h;
    throttle_zone $http_x_key zone=dry:1m   rate=2r/h;
    throttle_zone $http_x_key zone=a:1m     rate=3r/h;
    throttle_zone $http_x_key zone=b:1m     rate=100r/h;
    throttle_zone $http_x_key zone=near:1m  rate=10r/h;
    throttle_zone $http_x_key zone=tiny:32k rate=1r/h;
    throttle_zone $http_x_key zone=st:1m    rate=100r/h mode=strict;
    throttle_zone $http_x_key zone=sl:1m    rate=3r/h   mode=strict fallback=local;
    throttle_zone $http_x_key zone=so:1m    rate=100r/h mode=strict fallback=open;
    throttle_zone $http_x_key zone=sc:1m    rate=100r/h mode=strict fallback=closed;
    throttle_zone $http_x_key zone=sy:1m    rate=100r/h mode=sync sync=100ms;
    throttle_zone $http_x_key zone=st3:1m   rate=1r/h   mode=strict;
    throttle_zone $http_x_key zone=l1:1m    rate=2r/h;
    throttle_zone $http_x_key zone=st2:1m   rate=100r/h mode=strict;
    throttle_zone $http_x_key zone=frag:1m  rate=5r/h;
    throttle_zone $http_x_key zone=dfrag:1m rate=1r/h;
    throttle_zone $http_x_key zone=ir:1m    rate=5r/h;
    throttle_zone $http_x_key zone=sfrag:1m rate=2r/h   mode=strict;
EOF
my $locations = <<'EOF';
        location = /metrics      { throttle_metrics; }
        location = /metrics.json { throttle_metrics format=json; }
        location /loc/  { throttle zone=loc;  proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /dry/  { throttle zone=dry;  throttle_dry_run on; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /ab/   { throttle zone=a; throttle zone=b; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /b/    { throttle zone=b;    proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /near/ { throttle zone=near; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /tiny/ { throttle zone=tiny; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /st/   { throttle zone=st;   proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /sl/   { throttle zone=sl;   proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /so/   { throttle zone=so;   proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /sc/   { throttle zone=sc;   proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /sy/   { throttle zone=sy;   proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /st3/  { throttle zone=st3;  proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /ls/   { throttle zone=l1; throttle zone=st2; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location ~ \.html$ { ssi on; default_type text/html; }
        location /frag/  { throttle zone=frag; }
        location /dfrag/ { throttle zone=dfrag; throttle_dry_run on; }
        location /sfrag/ { throttle zone=sfrag; }
        location /ir/ { throttle zone=ir; try_files /nonexistent @ir; }
        location @ir  { throttle zone=ir; proxy_pass http://127.0.0.1:%%PORT_2%%; }
EOF
sub conf {
    my ($extra_zones, $extra_locations) = @_;
    return $redis->fill(<<"EOF");
http {
    throttle_secret test-secret-0123456789abcdef;
    throttle_redis %%REDIS%% timeout=1s connect_timeout=100ms;
$zones$extra_zones
    server {
        listen 127.0.0.1:%%PORT%% backlog=4096;
        add_header X-Status \$throttle_status always;
        root %%TESTDIR%%;
$locations$extra_locations    }
    server {
        listen 127.0.0.1:%%PORT_2%% backlog=4096;
        location / { return 200 "ok\\n"; }
    }
}
EOF
}
$t->allow(qr/throttle_zone "tiny" is full: evicting keys/);
$t->write_file("frag/$_.txt", "f$_") for 1 .. 3;
$t->write_file("dfrag/$_.txt", "d$_") for 1 .. 3;
$t->write_file('page.html', join '|', map {qq(<!--# include virtual="/frag/$_.txt" -->)} 1 .. 3);
$t->write_file("sfrag/$_.txt", "s$_") for 1 .. 3;
$t->write_file('spage.html', join '|', map {qq(<!--# include virtual="/sfrag/$_.txt" -->)} 1 .. 3);
$t->write_file('dpage.html', join '|', map {qq(<!--# include virtual="/dfrag/$_.txt" -->)} 1 .. 3);
$t->write_conf(conf('', ''))->run;
is(scalar(my @w = $t->worker_pids), 2, 'two workers');

# --- the two scrapes

# Prometheus text: { 'name{l1="v1",l2="v2"}' => value } (labels as written), and the
# families' TYPE lines.
sub prom {
    my $r = $t->get('/metrics');
    die "GET /metrics: $r->{status}\n" unless $r->{status} == 200;
    my (%v, %type);
    for my $line (split /\n/, $r->{body}) {
        if ($line =~ /^# TYPE (\S+) (\S+)$/) {
            $type{$1} = $2;
        } elsif ($line =~ /^([a-z_]+(?:\{[^}]*\})?) (\S+)$/) {
            $v{$1} = $2;
        } elsif ($line !~ /^# HELP /) {
            die "unexpected line in /metrics: $line\n";
        }
    }
    return { v => \%v, type => \%type };
}
sub json {
    my $r = $t->get('/metrics.json');
    die "GET /metrics.json: $r->{status}\n" unless $r->{status} == 200;
    return JSON::PP::decode_json($r->{body});
}

my @outcomes = qw(passed rejected dry_run_passed dry_run_rejected fallback_passed
    fallback_rejected skipped);
my %mode = (st => 'strict', sl => 'strict', so => 'strict', sc => 'strict', sy => 'sync',
    st2 => 'strict', st3 => 'strict', sfrag => 'strict');

# Every zone's numbers from both scrapes, checked to agree:
# { zone => { passed => n, ..., near_limit => n, evictions => n, keys => n, capacity => n } }.
sub scrape {
    my $p = prom();
    my $j = json();
    my %z;
    for my $zone (sort keys %{ $j->{zones} }) {
        my $jz = $j->{zones}{$zone};
        my $m = $mode{$zone} // 'local';
        $m = $jz->{mode} if $zone eq 'fresh';
        my $lab = qq(zone="$zone",mode="$m");
        for my $o (@outcomes) {
            my $pv = $p->{v}{qq(nginx_throttle_requests_total{$lab,outcome="$o"})};
            $z{$zone}{$o} = $jz->{requests}{$o};
            is($pv, $jz->{requests}{$o}, "$zone $o: text and JSON agree")
                unless defined $pv && $pv == $jz->{requests}{$o};
        }
        for ([near_limit => 'nginx_throttle_near_limit_total'],
            [evictions => 'nginx_throttle_evictions_total'], [keys => 'nginx_throttle_keys'],
            [capacity => 'nginx_throttle_keys_capacity'])
        {
            my ($k, $name) = @$_;
            my $pv = $p->{v}{"$name\{$lab\}"};
            $z{$zone}{$k} = $jz->{$k};
            is($pv, $jz->{$k}, "$zone $k: text and JSON agree")
                unless defined $pv && $pv == $jz->{$k};
        }
        if ($m eq 'strict') {
            $z{$zone}{strict_decisions} = $jz->{strict_decisions};
            $z{$zone}{decision_count} = $jz->{strict_decision_duration_seconds}{count};
            my $pv = $p->{v}{"nginx_throttle_strict_decisions_total{$lab}"};
            is($pv, $jz->{strict_decisions}, "$zone strict_decisions: text and JSON agree")
                unless defined $pv && $pv == $jz->{strict_decisions};
        }
        if ($m eq 'sync') {
            $z{$zone}{$_} = $jz->{$_} for qw(sync_flushes sync_errors);
            $z{$zone}{flush_keys_sum} = $jz->{sync_flush_keys}{sum};
            $z{$zone}{flush_keys_count} = $jz->{sync_flush_keys}{count};
            $z{$zone}{flush_duration_count} = $jz->{sync_flush_duration_seconds}{count};
            $z{$zone}{last_flush} = exists $jz->{sync_last_flush_age_seconds};
        }
    }
    my ($target) = keys %{ $j->{redis} };
    $z{_redis} = $j->{redis}{$target} if defined $target;
    $z{_prom} = $p;
    return \%z;
}

# The outcomes of a zone other than 0, as "outcome=n ...".
sub outcomes {
    my ($s, $zone) = @_;
    return join ' ', map { "$_=$s->{$zone}{$_}" } grep { $s->{$zone}{$_} } @outcomes;
}

sub statuses {
    my %n;
    $n{"$_->{status}:" . ($_->{headers}{'x-status'} // '')}++ for @_;
    return join ', ', map { "$_ x $n{$_}" } sort keys %n;
}
# $n requests at once for $path; $key: a key, or a sub giving request $i's key (undef: none).
sub at_once {
    my ($n, $path, $key) = @_;
    return $t->concurrent($n, sub {
        my $k = ref $key ? $key->($_[0]) : $key;
        ['GET', $path, defined $k ? { 'X-Key' => $k } : {}];
    });
}

Throttle::Redis::clear_of_window_edge(3600, 60);

my $s = scrape();
is(scalar(grep { $_ !~ /^_/ } keys %$s), 18, 'every zone is in the scrape');
is(join(',', map { outcomes($s, $_) || () } grep { !/^_/ } sort keys %$s), '',
    'before any request: every outcome is 0');
my $p = $s->{_prom};
is($p->{type}{nginx_throttle_requests_total}, 'counter', 'requests_total is a counter');
ok(exists $p->{v}{'nginx_throttle_requests_total{zone="loc",mode="local",outcome="skipped"}'},
    'labels zone, mode, outcome');

# --- a local zone: 5r/h, 8 requests at once for one key: 5 passed, 3 rejected (across both
# workers); 4 without a key: skipped
my @r = at_once(8, '/loc/', 'k1');
is(statuses(@r), '200:PASSED x 5, 429:REJECTED x 3', 'loc: 5 of 8 pass');
@r = at_once(4, '/loc/', undef);
is(statuses(@r), '200: x 4', 'loc: 4 requests without a key pass, not limited');
$s = scrape();
is(outcomes($s, 'loc'), 'passed=5 rejected=3 skipped=4', 'loc: passed 5, rejected 3, skipped 4');
is($s->{loc}{keys}, 1, 'loc: one key in the table');

# --- dry run: 2r/h, 5 requests: 2 dry_run_passed, 3 dry_run_rejected (all served)
@r = at_once(5, '/dry/', 'd1');
is(statuses(@r), '200:PASSED x 2, 200:REJECTED_DRY_RUN x 3', 'dry: all 5 served');
$s = scrape();
is(outcomes($s, 'dry'), 'dry_run_passed=2 dry_run_rejected=3', 'dry: 2 dry_run_passed, 3 dry_run_rejected');

# --- two zones in one location: a (3r/h) rejects the 4th and 5th; b (100r/h) would have passed
# them, but did not count them, and counts no outcome for them
for my $i (1 .. 5) {
    my $r = $t->get('/ab/', 'X-Key' => 'ab1');
    is($r->{status}, $i <= 3 ? 200 : 429, "a+b: request $i " . ($i <= 3 ? 'passes' : 'rejected by a'));
}
$s = scrape();
is(outcomes($s, 'a'), 'passed=3 rejected=2', 'a: passed 3, rejected 2');
is(outcomes($s, 'b'), 'passed=3', 'b: passed 3 (the 2 requests a rejected count nothing in b)');
# b counted 3: 97 more pass in b alone, the 98th is rejected
@r = at_once(98, '/b/', 'ab1');
is(statuses(@r), '200:PASSED x 97, 429:REJECTED x 1', 'b: the requests a rejected were not counted in b');

# --- near_limit: 10r/h, 12 requests one by one: the 9th (1 left) and the 10th (0 left)
my @near;
for my $i (1 .. 12) {
    my $r = $t->get('/near/', 'X-Key' => 'n1');
    my ($left) = ($r->{headers}{ratelimit} // '') =~ /;r=(\d+)/;
    push @near, $i if $r->{status} == 200 && defined $left && $left <= 1;
}
is("@near", '9 10', 'near: requests 9 and 10 passed with at most 1 of 10 left (RateLimit r=)');
$s = scrape();
is(outcomes($s, 'near'), 'passed=10 rejected=2', 'near: passed 10, rejected 2');
is($s->{near}{near_limit}, 2, 'near: near_limit 2');
is($s->{loc}{near_limit}, 1, 'loc: near_limit 1 (its 5th pass left 0 of 5)');

# --- evictions: a 32k zone holds few keys; more live keys (1r/h, each counted once) than it
# holds evict keys whose counts still matter
my $cap = $s->{tiny}{capacity};
ok($cap > 0 && $cap < 1000, "tiny: capacity $cap keys");
my $sent = $cap + 40;
for (my $from = 0; $from < $sent; $from += 100) {
    my $n = $sent - $from < 100 ? $sent - $from : 100;
    @r = at_once($n, '/tiny/', sub { 'e' . ($from + $_[0]) });
    is(statuses(@r), "200:PASSED x $n", "tiny: keys $from.." . ($from + $n - 1) . ' pass');
}
$s = scrape();
is(outcomes($s, 'tiny'), "passed=$sent", "tiny: passed $sent");
ok($s->{tiny}{evictions} > 0, "tiny: evictions counted ($s->{tiny}{evictions})");
is($s->{tiny}{evictions}, $sent - $s->{tiny}{keys},
    "tiny: evictions = keys inserted - keys left ($sent - $s->{tiny}{keys})");
is($s->{loc}{evictions}, 0, 'loc: no eviction');

# --- strict: decided by Redis, batched
my $calls = $redis->script_calls;
my $before = $s->{_redis}{strict_batch_size};
@r = at_once(30, '/st/', 's1');
is(statuses(@r), '200:PASSED x 30', 'st: 30 pass');
for my $i (1 .. 3) {
    is($t->get('/st/', 'X-Key' => 's2')->{status}, 200, "st: one more ($i)");
}
my $trips = $redis->script_calls - $calls;
$s = scrape();
is(outcomes($s, 'st'), 'passed=33', 'st: passed 33');
is($s->{st}{strict_decisions}, 33, 'st: 33 strict decisions');
is($s->{st}{decision_count}, 33, 'st: 33 decision durations observed');
my $bs = $s->{_redis}{strict_batch_size};
is($bs->{sum} - $before->{sum}, 33, 'redis: strict batches held 33 requests in all');
is($bs->{count} - $before->{count}, $trips, "redis: one batch per script call Redis ran ($trips)");

# --- a strict zone that Redis rejects: rejected; then rejected here without asking Redis
my @st3 = map { $t->get('/st3/', 'X-Key' => 's3') } 1 .. 3;
is(statuses(@st3), '200:PASSED x 1, 429:REJECTED x 2', 'st3: 1 of 3 passes');
# --- a local zone next to a strict one: what the local zone rejects is not asked of Redis
my @ls = map { $t->get('/ls/', 'X-Key' => 'ls1') } 1 .. 4;
is(statuses(@ls), '200:PASSED x 2, 429:REJECTED x 2', 'l1+st2: 2 of 4 pass');
$s = scrape();
is(outcomes($s, 'st3'), 'passed=1 rejected=2', 'st3: passed 1, rejected 2');
is($s->{st3}{strict_decisions}, 2, 'st3: 2 strict decisions (the 3rd was rejected locally)');
is(outcomes($s, 'l1'), 'passed=2 rejected=2', 'l1: passed 2, rejected 2');
is(outcomes($s, 'st2'), 'passed=2', 'st2: passed 2, nothing for what l1 rejected');
is($s->{st2}{strict_decisions}, 2, 'st2: 2 strict decisions');

# --- once per client request: three SSI includes of one zone, an internal redirect
my $page = $t->get('/page.html', 'X-Key' => 'p1');
is($page->{body}, 'f1|f2|f3', 'SSI: three includes');
$page = $t->get('/page.html');
is($page->{body}, 'f1|f2|f3', 'SSI without a key: three includes');
is($t->get('/dpage.html', 'X-Key' => 'p1')->{body}, 'd1|d2|d3', 'SSI dry run: three includes');
is($t->get('/dpage.html', 'X-Key' => 'p1')->{body}, 'd1|d2|d3', 'SSI dry run, over the limit: three includes');
is($t->get('/ir/', 'X-Key' => 'i1')->{status}, 200, 'internal redirect: passes');
$s = scrape();
is(outcomes($s, 'frag'), 'passed=1 skipped=1', 'SSI: one pass, one skip (once per client request)');
is(outcomes($s, 'dfrag'), 'dry_run_passed=1 dry_run_rejected=1', 'SSI dry run: one outcome per client request');
is(outcomes($s, 'ir'), 'passed=1', 'internal redirect: counted once');

# --- three SSI includes of a strict zone: Redis decides the first, the others wait for it
# and skip the zone once it counted the page (2r/h: two pages pass; the third page's first
# include is rejected by Redis, the next ones here, without asking)
my @pages = map { $t->get('/spage.html', 'X-Key' => 'sp1')->{body} } 1 .. 3;
is("@pages[0, 1]", 's1|s2|s3 s1|s2|s3', 'strict SSI: two pages pass');
like($pages[2], qr/rate limit exceeded in zone \\"sfrag\\"/, 'strict SSI: the third is rejected');
$s = scrape();
is(outcomes($s, 'sfrag'), 'passed=2 rejected=1', 'strict SSI: one outcome per page');
is($s->{sfrag}{strict_decisions}, 3, 'strict SSI: one Redis decision per page');

# --- sync: one key, counts flushed to Redis; each flush sends that one key
@r = at_once(7, '/sy/', 'y1');
is(statuses(@r), '200:PASSED x 7', 'sy: 7 pass');
my $base = Throttle::Redis::zone_base('sy', 'y1');
ok(Throttle::Redis::wait_for(sub { $redis->sum("$base:*") == 7 }), 'sy: Redis holds 7');
ok(Throttle::Redis::wait_for(sub {
    $s = scrape();
    $s->{sy}{sync_flushes} > 0 && $s->{sy}{flush_duration_count} == $s->{sy}{sync_flushes};
}), 'sy: every flush answered');
is(outcomes($s, 'sy'), 'passed=7', 'sy: passed 7');
cmp_ok($s->{sy}{sync_flushes}, '<=', 7, "sy: $s->{sy}{sync_flushes} flush(es) sent the 7 counts");
is($s->{sy}{flush_keys_count}, $s->{sy}{sync_flushes}, 'sy: keys observed once per flush');
is($s->{sy}{flush_keys_sum}, $s->{sy}{sync_flushes}, 'sy: one key per flush');
is($s->{sy}{sync_errors}, 0, 'sy: no error');
ok($s->{sy}{last_flush}, 'sy: last flush age present');
ok(exists $s->{_prom}{v}{'nginx_throttle_sync_last_flush_age_seconds{zone="sy",mode="sync"}'},
    'sy: last flush age in the text');
my $flushes = $s->{sy}{sync_flushes};

# --- Redis killed: the strict zones take their fallback
my $port = $redis->port;
$t->allow(qr/\[error\].*throttle_redis: redis 127\.0\.0\.1:$port: /);
my $decisions = $s->{st}{strict_decisions} + $s->{sl}{strict_decisions};
$redis->kill;
my @sl;
push @sl, $t->get('/sl/', 'X-Key' => 'f1') for 1 .. 5;
is(statuses(@sl), '200:PASSED_FALLBACK x 3, 429:REJECTED_FALLBACK x 2', 'sl: fallback=local, 3 of 5 pass');
is(statuses(map { $t->get('/so/', 'X-Key' => 'f1') } 1 .. 2), '200:PASSED_FALLBACK x 2', 'so: fallback=open passes');
is(statuses(map { $t->get('/sc/', 'X-Key' => 'f1') } 1 .. 2), '429:REJECTED_FALLBACK x 2', 'sc: fallback=closed rejects');
$s = scrape();
is(outcomes($s, 'sl'), 'fallback_passed=3 fallback_rejected=2', 'sl: fallback_passed 3, fallback_rejected 2');
is($s->{sl}{near_limit}, 1, 'sl: near_limit 1 (the 3rd left 0 of 3)');
is(outcomes($s, 'so'), 'fallback_passed=2', 'so: fallback_passed 2');
is(outcomes($s, 'sc'), 'fallback_rejected=2', 'sc: fallback_rejected 2');
is($s->{st}{strict_decisions} + $s->{sl}{strict_decisions} + $s->{so}{strict_decisions}
    + $s->{sc}{strict_decisions}, $decisions, 'no strict decision while Redis is down');
is(outcomes($s, 'loc'), 'passed=5 rejected=3 skipped=4', 'loc: unchanged');

# --- reload: a kept zone keeps its counters, a new one starts at 0
$redis->start;
ok($t->write_conf(conf("    throttle_zone \$http_x_key zone=fresh:1m rate=5r/h;\n",
    "        location /fresh/ { throttle zone=fresh; proxy_pass http://127.0.0.1:%%PORT_2%%; }\n"))
    ->reload, 'reloaded with a new zone');
$s = scrape();
is(outcomes($s, 'loc'), 'passed=5 rejected=3 skipped=4', 'reload: loc kept its counters');
is(outcomes($s, 'tiny'), "passed=$sent", 'reload: tiny kept its counters');
is(outcomes($s, 'fresh'), '', 'reload: the new zone starts at 0');
is($t->get('/fresh/', 'X-Key' => 'r1')->{status}, 200, 'fresh: a request passes');
is($t->get('/loc/', 'X-Key' => 'k1')->{status}, 429, 'loc: k1 still over its limit after the reload');
$s = scrape();
is(outcomes($s, 'fresh'), 'passed=1', 'fresh: passed 1');
is(outcomes($s, 'loc'), 'passed=5 rejected=4 skipped=4', 'loc: counts on after the reload');

$t->done;
