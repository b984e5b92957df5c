package Throttle::SyncKeys;

# Many distinct keys through a sync zone, for the tests at scale (t/43, t/71).
#
#   my $sk = Throttle::SyncKeys->new(t => $t, redis => $redis, keys => 100000);
#   $sk->run_wrk;                 # every key once (wrk threads 0..threads-1), 'wrk ran' checked
#   $sk->admitted;                # requests the access log marks PASSED
#   $sk->redis_sum;               # the sum of the zone's window counters in Redis (-1: no answer)
#
# The location must log '$throttle_status' alone per line to TESTDIR/st.log (log => another
# name) and take its key from $arg_k; the zone's keys in Redis start with
# 'throttle:{ZONE:' (zone => 'many' by default). wrk: thread i sends /k?k=i-1, /k?k=i-2, ...
# and stops after keys / threads requests; wrk itself waits out -d, so run_wrk interrupts it
# (SIGINT: it still prints its summary) once the log shows every key ("PASSED\n" per line).

use strict;
use warnings;
use Test::More;
use POSIX qw(WNOHANG);
use Throttle::Redis;

# The sum of every window counter of a zone (batch ids left out), in one call.
my $sum_script = <<'LUA';
local s = 0
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  if not string.find(k, ':flush:', 1, true) then s = s + tonumber(redis.call('GET', k)) end
end
return s
LUA

sub new {
    my ($class, %opt) = @_;
    my $self = bless {
        t => $opt{t}, redis => $opt{redis}, keys => $opt{keys}, wrk => wrk_path(),
        zone => $opt{zone} // 'many', threads => $opt{threads} // 2,
        connections => $opt{connections} // 64, log => $opt{log} // 'st.log',
    }, $class;
    my $share = int($self->{keys} / $self->{threads});
    $self->{t}->write_file('keys.lua', <<"LUA");
local threads = 0
function setup(thread) thread:set("id", threads) threads = threads + 1 end
local n, got = 0, 0
function request()
  n = n + 1
  return wrk.format("GET", "/k?k=" .. id .. "-" .. n)
end
function response()
  got = got + 1
  if got >= $share then wrk.thread:stop() end
end
LUA
    return $self;
}

# The wrk binary, or undef (the test then skips).
sub wrk_path { my ($wrk) = grep { -x } map { "$_/wrk" } split /:/, $ENV{PATH}; $wrk }

sub redis_sum {
    my ($self) = @_;
    my $v = $self->{redis}->cli('EVAL', $sum_script, 0, "throttle:{$self->{zone}:*");
    return $v =~ /^\d+$/ ? $v : -1;
}

sub admitted {
    my ($self) = @_;
    open my $fh, '<', $self->{t}->testdir . "/$self->{log}" or return 0;
    my $n = 0;
    while (<$fh>) { $n++ if /^PASSED$/ }
    return $n;
}

# Sends every key once; stops wrk once the log holds `enough` lines (default: keys).
# Options: enough => N, tick => sub { ... } (called every step seconds while wrk runs),
# step => seconds (0.5), timeout => seconds (300: then wrk is killed). Checks 'wrk ran'.
sub run_wrk {
    my ($self, %opt) = @_;
    my $t = $self->{t};
    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        open STDOUT, '>', $t->testdir . '/wrk.out';
        open STDERR, '>&', \*STDOUT;
        { exec $self->{wrk}, "-t$self->{threads}", "-c$self->{connections}", '-d300s', '-s',
            $t->testdir . '/keys.lua', 'http://127.0.0.1:' . $t->port . '/' };
        POSIX::_exit(127);
    }
    my $log = $t->testdir . "/$self->{log}";
    my $bytes = 7 * ($opt{enough} // $self->{keys});    # "PASSED\n"
    Throttle::Redis::wait_for(sub {
        $opt{tick}->() if $opt{tick};
        kill 'INT', $pid if (-s $log // 0) >= $bytes;
        waitpid($pid, WNOHANG) == $pid;
    }, timeout => $opt{timeout} // 300, step => $opt{step} // 0.5)
        or do { kill 'KILL', $pid; waitpid($pid, 0) };
    is($? >> 8, 0, 'wrk ran') or diag($t->read_file('wrk.out'));
}

1;
