#!/usr/bin/perl
# Memory a client can make a worker hold (issue 9, item 11): a large entry, stored gzip'd, read
# slowly by clients that do not accept gzip. The worker inflates it in bounded pieces as each
# connection can take them, so 20 slow readers of a 24 MB body cost the worker a few MB, not
# 20 x 24 MB; every reader still gets the whole body, byte for byte. Per worker, the memory
# held for inflated bodies is bounded (throttle_cache_inflate_memory): beyond it, a hit for
# such a client goes upstream (BYPASS) instead. A gzip client gets the stored gzip body; a
# Range request on the inflated body is answered (206) from the stream.
#
# One worker, so that every request lands in the worker whose VmRSS is measured.

use strict;
use warnings;
use Test::More;
use IO::Socket::INET;
use IO::Select;
use Socket qw(SOL_SOCKET SO_RCVBUF);
use IO::Uncompress::Gunzip ();
use Time::HiRes qw(time sleep);
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new->need_fds(200);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

my $conf = <<'EOF';
worker_processes 1;
http {
    throttle_redis %%REDIS%% timeout=5s;
    throttle_cache_secret test-secret-0123456789abcdef;
    %%INFLATE%%
    add_header X-Cache $throttle_cache_status always;
    proxy_http_version 1.1;
    send_timeout 120s;

    server {
        listen 127.0.0.1:%%PORT%% backlog=1024;
        location /big/ {
            throttle_cache main;
            throttle_cache_valid 200 600s;
            throttle_cache_max_size 64m;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
    }
}
EOF
sub conf_with {
    my ($inflate) = @_;
    (my $c = $conf) =~ s/%%INFLATE%%/$inflate/;
    return $redis->fill($c);
}
$t->write_conf(conf_with(''))->run;

my $SIZE = 24 * 1024 * 1024;
my $URL = "/big/x?_size=$SIZE";

sub xc { $_[0]{headers}{'x-cache'} // '' }
sub gunzip_str {
    my ($z) = @_;
    my $out;
    IO::Uncompress::Gunzip::gunzip(\$z => \$out) or return undef;
    return $out;
}
sub rss_kb {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/status" or return 0;
    while (<$fh>) { return $1 if /^VmRSS:\s+(\d+)\s+kB/ }
    return 0;
}
sub the_worker {
    my @w = $t->worker_pids;
    is(scalar @w, 1, 'one worker') or BAIL_OUT('expected one worker');
    return $w[0];
}

# Connections that send a request without Accept-Encoding and then read nothing until told to.
# A small receive buffer keeps the kernel from taking the body off the worker's hands.
sub open_readers {
    my ($n, $path) = @_;
    my @s;
    for my $i (1 .. $n) {
        my $s = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
        setsockopt($s, SOL_SOCKET, SO_RCVBUF, 4096);
        $s->connect(Socket::pack_sockaddr_in($t->port, Socket::inet_aton('127.0.0.1')))
            or die "connect: $!";
        $s->autoflush(1);
        print $s "GET $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        push @s, { sock => $s, buf => '', eof => 0 };
    }
    return @s;
}

# Reads from every reader until each has its response header (and whatever came with it).
sub read_headers {
    my (@r) = @_;
    my $deadline = time + 120;
    my $sel = IO::Select->new(map { $_->{sock} } @r);
    my %by = map { fileno($_->{sock}) => $_ } @r;
    while (grep { $_->{buf} !~ /\r\n\r\n/ && !$_->{eof} } @r) {
        last if time > $deadline;
        for my $s ($sel->can_read(1)) {
            my $x = $by{ fileno $s };
            next if $x->{buf} =~ /\r\n\r\n/;
            my $n = sysread($s, my $chunk, 1024);
            if (!$n) { $x->{eof} = 1; $sel->remove($s); next }
            $x->{buf} .= $chunk;
        }
    }
}

# Reads every reader to its end (Connection: close); calls $each now and then.
sub read_all {
    my ($each, @r) = @_;
    my $deadline = time + 300;
    my $sel = IO::Select->new(map { $_->{sock} } grep { !$_->{eof} } @r);
    my %by = map { fileno($_->{sock}) => $_ } @r;
    my $reads = 0;
    while ($sel->count && time < $deadline) {
        for my $s ($sel->can_read(1)) {
            my $x = $by{ fileno $s };
            my $n = sysread($s, my $chunk, 65536);
            if (!$n) { $x->{eof} = 1; $sel->remove($s); close $s; next }
            $x->{buf} .= $chunk;
            $each->() if $each && ++$reads % 200 == 0;
        }
    }
    for my $x (@r) {
        my ($head, $body) = split /\r\n\r\n/, $x->{buf}, 2;
        $x->{head} = $head // '';
        $x->{body} = $body // '';
        ($x->{status}) = $x->{head} =~ m{^HTTP/1\.\d (\d+)};
        ($x->{xc}) = $x->{head} =~ /^X-Cache: (\S+)/mi;
        $x->{xc} //= '';
        $x->{gzip} = $x->{head} =~ /^Content-Encoding: gzip/mi ? 1 : 0;
    }
}

# ---- fill the entry, and what a gzip client gets ----

my $miss = $t->get($URL);
is(length $miss->{body}, $SIZE, 'the miss has the whole body');
is(xc($miss), 'MISS', 'the first request is a MISS');
my $plain_body = $miss->{body};

my $gz = $t->get($URL, 'Accept-Encoding' => 'gzip');
is(xc($gz), 'HIT', 'a gzip client: HIT');
is($gz->{headers}{'content-encoding'}, 'gzip', 'a gzip client gets the stored gzip body');
ok(length $gz->{body} < $SIZE / 4, 'which is compressed (' . length($gz->{body}) . ' bytes)');
ok((gunzip_str($gz->{body}) // '') eq $plain_body, 'and gunzips to the miss\'s bytes');

my $one = $t->get($URL);
is(xc($one), 'HIT', 'a plain client: HIT');
ok(!exists $one->{headers}{'content-encoding'}, 'a plain client: no Content-Encoding');
is($one->{headers}{'content-length'}, $SIZE, 'a plain client: Content-Length of the plain body');
ok($one->{body} eq $plain_body, 'a plain client: the inflated body is byte-identical');

my $range = $t->get($URL, Range => 'bytes=10000000-10000099');
is($range->{status}, 206, 'Range on the inflated body: 206');
ok($range->{body} eq substr($plain_body, 10000000, 100), 'Range: the right 100 bytes');
my $tail = $t->get($URL, Range => "bytes=-10");
ok($tail->{status} == 206 && $tail->{body} eq substr($plain_body, -10), 'Range: the last 10 bytes');
my $head = $t->request('HEAD', $URL);
ok($head->{status} == 200 && $head->{headers}{'content-length'} == $SIZE && $head->{body} eq '',
    'HEAD: the plain length, no body');
is($app->count('/big/x'), 1, 'one upstream request in all');

# ---- 20 slow readers ----

my $worker = the_worker();
my $before = rss_kb($worker);
ok($before > 0, "worker RSS before: $before kB");
my $N = 20;
my @r = open_readers($N, $URL);
read_headers(@r);
is(scalar(grep { $_->{buf} =~ /\r\n\r\n/ } @r), $N, "all $N slow readers have their header");
my $peak = rss_kb($worker);
for (1 .. 5) {    # the worker went as far as it can with readers that do not read
    sleep 0.2;
    my $now = rss_kb($worker);
    $peak = $now if $now > $peak;
}
# Now they read (with room to read fast: a 4 KB window would take minutes).
setsockopt($_->{sock}, SOL_SOCKET, SO_RCVBUF, 1 << 20) for @r;
read_all(sub { my $now = rss_kb($worker); $peak = $now if $now > $peak }, @r);
my $growth_mb = ($peak - $before) / 1024;
diag(sprintf 'worker RSS %d kB before, %d kB at most with %d slow readers (+%.1f MB)',
    $before, $peak, $N, $growth_mb);
# Holding the inflated body per reader would be 20 x 24 MB = 480 MB. What a reader may cost
# is its copy of the stored entry (about 1.2 MB gzip'd) and two 64 KB buffers.
cmp_ok($growth_mb, '<', 100, "RSS growth with $N slow readers stays far below $N x 24 MB");
is(scalar(grep { ($_->{status} // 0) == 200 } @r), $N, 'every slow reader: 200');
is(scalar(grep { $_->{xc} eq 'HIT' } @r), $N, 'every slow reader: HIT')
    or diag(join ' ', map { "$_->{xc}/" . length($_->{body}) } @r);
is(scalar(grep { !$_->{gzip} && $_->{body} eq $plain_body } @r), $N,
    'every slow reader: the whole body, inflated, byte-identical');
is($app->count('/big/x'), 1, 'still one upstream request');

# ---- the per-worker bound ----

my $mark = $t->log_mark;
ok($t->write_conf(conf_with('throttle_cache_inflate_memory 1m;'))->reload, 'reload with a 1 MB bound');
@r = open_readers(10, $URL);
read_headers(@r);
setsockopt($_->{sock}, SOL_SOCKET, SO_RCVBUF, 1 << 20) for @r;
read_all(undef, @r);
my %xc;
$xc{ $_->{xc} }++ for @r;
ok(($xc{HIT} // 0) >= 1, 'within the bound: HITs (' . ($xc{HIT} // 0) . ')');
ok(($xc{BYPASS} // 0) >= 1, 'beyond the bound: BYPASS (' . ($xc{BYPASS} // 0) . ')');
is(($xc{HIT} // 0) + ($xc{BYPASS} // 0), 10, 'nothing else');
is(scalar(grep { ($_->{status} // 0) == 200 && $_->{xc} eq 'HIT' && $_->{body} eq $plain_body } @r),
    $xc{HIT} // 0, 'every HIT: the whole body, byte-identical');
is(scalar(grep {
            ($_->{status} // 0) == 200 && $_->{xc} eq 'BYPASS' && length $_->{body} == $SIZE
                && Throttle::App::parse_body($_->{body})->{pattern_ok}
        } @r),
    $xc{BYPASS} // 0, 'every BYPASS: the upstream\'s whole body');
is($app->count('/big/x'), 1 + ($xc{BYPASS} // 0), 'each BYPASS went upstream');
ok(scalar $t->log_lines(qr/\[info\].*throttle_cache: .*inflat.*going upstream/, $mark),
    'the BYPASS is logged at info');
my $after = $t->get($URL);
ok(xc($after) eq 'HIT' && $after->{body} eq $plain_body, 'the bound is free again once they are done');

$t->done;
