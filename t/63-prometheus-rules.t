#!/usr/bin/perl
# The Prometheus files in conf.examples/ are valid as shipped: promtool accepts the alerting
# rules and the example scrape config (which names the rules file relative to itself), with
# every lint on and fatal; the rules' unit tests (t/prometheus/throttle-alerts.test.yml: each
# alert fires on the series it is meant for, at the time its `for:` allows, with its labels and
# rendered annotations, and not on the look-alikes next to them) pass; a real Prometheus loads
# the rules, and every alert has a `for:`, a severity and a summary and description, and is
# covered by the unit tests. Needs no nginx: Debian's prometheus package only.

use strict;
use warnings;
use Cwd ();
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp ();
use Throttle::Test ();
use Throttle::Prometheus;

if (my $why = Throttle::Prometheus::unavailable()) {
    plan skip_all => $why;
}

my $root = Cwd::abs_path("$FindBin::Bin/..");
my $rules = "$root/conf.examples/throttle-alerts.rules.yml";
my $config = "$root/conf.examples/prometheus.yml";
my $unit = "$root/t/prometheus/throttle-alerts.test.yml";

sub promtool { Throttle::Prometheus->run_promtool(undef, @_) }

# --- promtool check: exit 0, SUCCESS, and no lint finding (they would exit 3 with --lint-fatal)
{
    my ($st, $out) = promtool('check', 'rules', '--lint=all', '--lint-fatal', $rules);
    is($st, 0, 'promtool check rules accepts conf.examples/throttle-alerts.rules.yml') or diag($out);
    like($out, qr/SUCCESS: 10 rules found/, 'it finds the 10 rules') or diag($out);
}
{
    # From another directory: the config names its rules file relative to itself.
    my $tmp = File::Temp->newdir('throttle-promtool-XXXXXX', TMPDIR => 1);
    chdir "$tmp" or die "chdir: $!\n";
    my ($st, $out) = promtool('check', 'config', '--lint=all', '--lint-fatal', $config);
    chdir $root;
    is($st, 0, 'promtool check config accepts conf.examples/prometheus.yml') or diag($out);
    like($out, qr/SUCCESS: 1 rule files found/, 'it reads the rules file beside it') or diag($out);
    like($out, qr/\Q$rules\E\s+SUCCESS: 10 rules found/, 'the rules file is checked with it')
        or diag($out);
}

# --- the checks can fail: a broken expression and a config naming a missing rules file
{
    my $tmp = File::Temp->newdir('throttle-promtool-XXXXXX', TMPDIR => 1);
    my $text = _read($rules);
    (my $broken = $text) =~ s/nginx_throttle_redis_connected == 0/nginx_throttle_redis_connected ==/
        or die "the rules file changed: fix this test\n";
    _write("$tmp/broken.rules.yml", $broken);
    my ($st, $out) = promtool('check', 'rules', "$tmp/broken.rules.yml");
    isnt($st, 0, 'promtool check rules fails on a broken expression');
    like($out, qr/parse error/, 'and says where') or diag($out);

    (my $conf = _read($config))
        =~ s/throttle-alerts\.rules\.yml/missing.rules.yml/ or die "the config changed\n";
    _write("$tmp/prometheus.yml", $conf);
    ($st, $out) = promtool('check', 'config', "$tmp/prometheus.yml");
    isnt($st, 0, 'promtool check config fails when the rules file is missing');
    like($out, qr/missing\.rules\.yml.*does not point to an existing file/, 'and says which')
        or diag($out);
}

# --- the rules' unit tests
{
    my ($st, $out) = promtool('test', 'rules', $unit);
    is($st, 0, 'promtool test rules: every alert fires as t/prometheus/throttle-alerts.test.yml says')
        or diag($out);
    like($out, qr/SUCCESS/, 'promtool says SUCCESS') or diag($out);
}

# --- a real Prometheus loads them; what each alert carries
my @expected = qw(ThrottleCacheHitRatioDropped ThrottleCacheLookupErrors ThrottleHighRejectionRate
    ThrottleManyRequestsNearLimit ThrottleRedisBreakerOpen ThrottleRedisDisconnected
    ThrottleRedisErrors ThrottleRedisSlowCommands ThrottleSyncFlushErrors
    ThrottleSyncFlushStalled);
{
    # Nothing listens on the target: the rules are evaluated all the same (over no data).
    my $port = Throttle::Test::_free_port();
    my $prom = Throttle::Prometheus->new(target => '127.0.0.1:' . Throttle::Test::_free_port(),
        port => $port, rules => [$rules]);
    my @groups = $prom->rule_groups;
    is_deeply([sort map { $_->{name} } @groups], [qw(throttle-cache throttle-limits throttle-redis)],
        'Prometheus loads the three groups');
    my @alerts = map { @{ $_->{rules} } } @groups;
    is_deeply([sort map { $_->{name} } @alerts], \@expected, 'and the ten alerts');

    # One evaluation (evaluation_interval 1s) and every rule is healthy: the expressions run.
    Throttle::Prometheus::poll(sub {
        my @r = map { @{ $_->{rules} } } $prom->rule_groups;
        !grep { ($_->{health} // '') ne 'ok' } @r;
    }, timeout => 30);
    for my $r (map { @{ $_->{rules} } } $prom->rule_groups) {
        is($r->{health}, 'ok', "$r->{name}: evaluated without error")
            or diag($r->{lastError});
        is($r->{type}, 'alerting', "$r->{name}: an alerting rule");
        cmp_ok($r->{duration}, '>=', 60, "$r->{name}: has a for: of a minute or more");
        like($r->{labels}{severity} // '', qr/^(?:info|warning|critical)\z/,
            "$r->{name}: severity info, warning or critical");
        for my $a (qw(summary description)) {
            cmp_ok(length($r->{annotations}{$a} // ''), '>', 20, "$r->{name}: has a $a");
        }
    }
    $prom->stop;
}

# Every alert has a unit test in which it fires.
{
    my $text = _read($unit);
    my %fires;
    # alertname: X, then exp_alerts: with at least one exp_labels before the next test case
    while ($text =~ /alertname:\s*(\w+)\s*\n\s*exp_alerts:\s*\n\s*- exp_labels:/g) {
        $fires{$1}++;
    }
    is_deeply([sort keys %fires], \@expected, 'every alert has a unit test where it fires');
}

sub _read {
    my ($path) = @_;
    open my $fh, '<', $path or die "read $path: $!\n";
    local $/;
    return <$fh>;
}

sub _write {
    my ($path, $text) = @_;
    open my $fh, '>', $path or die "write $path: $!\n";
    print $fh $text;
    close $fh or die "close $path: $!\n";
}

done_testing;
