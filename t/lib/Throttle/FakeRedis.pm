package Throttle::FakeRedis;

# A Redis that misbehaves on demand, for the integration tests (core Perl only): a proxy on a
# free loopback port in front of a real Throttle::Redis. In mode 'ok' it passes every command
# to the real server and its reply back; in the other modes it still does for the handshake
# (AUTH, SELECT, SCRIPT LOAD, PING) and for commands other than EVALSHA, but answers EVALSHA
# as the mode says:
#
#   surplus      the real reply, twice            huge_array   *2147483647
#   array300m    *300000000                       huge_bulk    $2000000000
#   nested       *1 10000 times                   garbage      !garbage
#   close_mid    half a reply, then close         noscript     NOSCRIPT, always
#   wrong_error  -ERR nobody expects this         wrong_shape  :1 (not what any script returns)
#   slow         the real reply, held back: mode('slow', 150) passes EVALSHA to the real
#                server at once (it runs now) and sends its reply 150 ms later; replies on a
#                connection keep their order, the proxy serves the others meanwhile;
#                mode('slow', 150, 3): only every third EVALSHA (counted over all connections)
#   hold         the real reply, held back until the mode changes (then sent, in order): the
#                server runs each EVALSHA at once; `held` says how many were waiting for their
#                reply on one connection at most
#   reset        while replies are held: their connections are closed (the client sees a
#                reset with calls in flight); otherwise as ok
#
# SUBSCRIBE is confirmed here and nothing is ever published to it.
#
#   my $redis = Throttle::Redis->new(t => $t);
#   my $fake  = Throttle::FakeRedis->new(t => $t, redis => $redis);   # started
#   $t->write_conf($fake->fill(<<'EOF'))->run;   # %%FAKE_REDIS%%: 127.0.0.1:PORT
#   $fake->mode('garbage');  ...  $fake->mode('ok');
#   $fake->connections;  $fake->count('EVALSHA');
#
# The mode is read from a file before each EVALSHA, so it changes at once for every
# connection. One process serves every connection (select loop; the real server is asked
# synchronously). It is stopped when the object goes away and, whatever happens, at END.

use strict;
use warnings;

use Errno qw(EINTR);
use IO::Select;
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Scalar::Util ();
use Time::HiRes qw(time sleep);

my %LIVE;

my %ANSWER = (
    huge_array  => "*2147483647\r\n",
    array300m   => "*300000000\r\n",
    huge_bulk   => "\$2000000000\r\n",
    nested      => "*1\r\n" x 10000,
    garbage     => "!garbage\r\n",
    close_mid   => "*3\r\n\$3\r\nfoo\r\n\$3\r\nba",
    noscript    => "-NOSCRIPT No matching script. Please use EVAL.\r\n",
    wrong_error => "-ERR nobody expects this\r\n",
    wrong_shape => ":1\r\n",
);

sub modes { ('ok', 'surplus', 'slow', 'hold', 'reset', sort keys %ANSWER) }

# Options: t => Throttle::Test (directory and port), redis => Throttle::Redis (the real one).
sub new {
    my ($class, %opt) = @_;
    my $self = bless { redis => $opt{redis}, owner => $$ }, $class;
    $self->{dir} = $opt{t}->testdir . '/fake-redis';
    mkdir $self->{dir};
    $self->{port} = $opt{t}->port('fake_redis');
    $self->mode('ok');
    open my $fh, '>', "$self->{dir}/events.log" or die "events.log: $!\n";
    close $fh;
    $self->start;
    return $self;
}

sub port    { $_[0]{port} }
sub address { "127.0.0.1:$_[0]{port}" }

sub fill {
    my ($self, $text) = @_;
    my $addr = $self->address;
    $text =~ s/%%FAKE_REDIS%%/$addr/g;
    return $text;
}

sub mode {
    my ($self, $mode, $delay_ms, $every) = @_;
    die "unknown mode $mode\n" unless grep { $_ eq $mode } modes();
    open my $fh, '>', "$self->{dir}/mode.tmp" or die "mode: $!\n";
    print $fh $mode eq 'slow' ? "slow:" . ($delay_ms // 100) . ':' . ($every // 1) : $mode;
    close $fh;
    rename "$self->{dir}/mode.tmp", "$self->{dir}/mode" or die "mode: $!\n";
    return $self;
}

sub _events {
    my ($self) = @_;
    open my $fh, '<', "$self->{dir}/events.log" or return ();
    return <$fh>;
}

# Connections accepted, and commands received by name (upper case), since the start.
sub connections { scalar grep { /^accept$/ } $_[0]->_events }
sub count { my ($self, $name) = @_; scalar grep { /^cmd \Q$name\E$/ } $self->_events }
# The most EVALSHA replies held (mode hold) at once on one connection, since the start.
sub held {
    my $max = 0;
    for (map { /^held (\d+)$/ ? $1 : () } $_[0]->_events) { $max = $_ if $_ > $max }
    return $max;
}

sub start {
    my ($self) = @_;
    my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $self->{port},
        Proto => 'tcp', Listen => 128, ReuseAddr => 1)
        or die "Throttle::FakeRedis: listen on $self->{port}: $!\n";
    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        %LIVE = ();
        $SIG{TERM} = sub { POSIX::_exit(0) };
        eval { _serve($listen, $self->{dir}, $self->{redis}->port) };
        print STDERR "Throttle::FakeRedis: $@" if $@;
        POSIX::_exit(0);
    }
    close $listen;
    $self->{pid} = $pid;
    $LIVE{$pid} = $self;
    Scalar::Util::weaken($LIVE{$pid});
    return $self;
}

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return $self;
    return $self if $$ != $self->{owner};
    CORE::kill 'TERM', $pid;
    my $deadline = time + 5;
    sleep 0.005 while waitpid($pid, WNOHANG) != $pid && time < $deadline;
    CORE::kill 'KILL', $pid;
    waitpid $pid, 0;
    delete $LIVE{$pid};
    return $self;
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $!, $@);
    $self->stop if $self->{pid} && $$ == ($self->{owner} // 0);
}

END {
    local $?;
    $_->stop for grep { defined } values %LIVE;
}

# ---------------------------------------------------------------------------------------
# the server (child process)

# One command (an array of bulk strings) from the front of $$buf: its argv, or undef.
sub _command {
    my ($buf) = @_;
    return undef unless $$buf =~ /\A\*(\d+)\r\n/;
    my ($n, $pos) = ($1, $+[0]);
    my @argv;
    for (1 .. $n) {
        pos($$buf) = $pos;
        return undef unless $$buf =~ /\G\$(\d+)\r\n/gc;
        my $len = $1;
        $pos = pos($$buf);
        return undef if length($$buf) < $pos + $len + 2;
        push @argv, substr($$buf, $pos, $len);
        $pos += $len + 2;
    }
    substr($$buf, 0, $pos, '');
    return \@argv;
}

# Reads one whole reply from the real server (blocking): its bytes.
sub _reply {
    my ($up) = @_;
    my $line = sub {
        my $l = '';
        while ($l !~ /\r\n\z/) {
            my $n = sysread $up->{sock}, my $c, 1;
            die "the real redis closed\n" unless $n;
            $l .= $c;
        }
        return $l;
    };
    my $bytes = sub {
        my ($len) = @_;
        my $s = '';
        while (length $s < $len) {
            my $n = sysread $up->{sock}, $s, $len - length $s, length $s;
            die "the real redis closed\n" unless $n;
        }
        return $s;
    };
    my $read;
    $read = sub {
        my $l = $line->();
        if ($l =~ /^\$(-?\d+)/) {
            return $1 < 0 ? $l : $l . $bytes->($1 + 2);
        }
        if ($l =~ /^\*(-?\d+)/) {
            my $out = $l;
            $out .= $read->() for 1 .. ($1 < 0 ? 0 : $1);
            return $out;
        }
        return $l;
    };
    return $read->();
}

sub _enc { join '', '*' . scalar(@_) . "\r\n", map { '$' . length($_) . "\r\n$_\r\n" } @_ }

sub _serve {
    my ($listen, $dir, $redis_port) = @_;
    open my $ev, '>>', "$dir/events.log" or die "events.log: $!\n";
    $ev->autoflush(1);
    my $sel = IO::Select->new($listen);
    my %conn;    # fileno => { sock, buf, up, out => [[due, bytes], ...] }
    my $slow_seq = 0;
    my $forever = 9e99;    # the due time of a reply held (mode hold)
    local $SIG{PIPE} = 'IGNORE';
    my $write = sub {
        my ($s, $out) = @_;
        my $off = 0;
        while ($off < length $out) {
            my $w = syswrite $s, $out, length($out) - $off, $off;
            last unless $w;
            $off += $w;
        }
    };
    # Replies held back (mode slow) whose time has come, in order, per connection.
    my $send_due = sub {
        my $now = time;
        for my $c (values %conn) {
            while (@{ $c->{out} } && $c->{out}[0][0] <= $now) {
                $write->($c->{sock}, (shift @{ $c->{out} })->[1]);
            }
        }
    };
    my $close = sub {
        my ($c) = @_;
        $sel->remove($c->{sock});
        delete $conn{ fileno $c->{sock} };
        close $c->{sock};
        close $c->{up}{sock} if $c->{up};
    };
    # Held replies: kept while the mode is hold; sent when it changes, or, in mode reset,
    # dropped with their connection.
    my $release = sub {
        my @holding = grep { grep { $_->[0] == $forever } @{ $_->{out} } } values %conn;
        return 0 unless @holding;
        open my $fh, '<', "$dir/mode" or return 1;
        my $mode = <$fh> // 'ok';
        return 1 if $mode eq 'hold';
        for my $c (@holding) {
            if ($mode eq 'reset') {
                print $ev "reset\n";
                $close->($c);
                next;
            }
            $_->[0] = 0 for grep { $_->[0] == $forever } @{ $c->{out} };
        }
        return 0;
    };
    while (1) {
        my $wait = $release->() ? 0.01 : 1;
        for my $c (values %conn) {
            next unless @{ $c->{out} };
            my $left = $c->{out}[0][0] - time;
            $wait = $left < $wait ? ($left > 0 ? $left : 0) : $wait;
        }
        my @ready = $sel->can_read($wait);
        $send_due->();
        for my $s (@ready) {
            if ($s == $listen) {
                my $c = $listen->accept or next;
                $sel->add($c);
                $conn{ fileno $c } = { sock => $c, buf => '', out => [] };
                print $ev "accept\n";
                next;
            }
            my $c = $conn{ fileno $s } or next;
            my $n = sysread $s, $c->{buf}, 65536, length $c->{buf};
            if (!$n) {
                $close->($c) unless !defined $n && $! == EINTR;
                next;
            }
            while (my $argv = _command(\$c->{buf})) {
                my $name = uc $argv->[0];
                print $ev "cmd $name\n";
                my ($out, $end, $delay, $mode_of_cmd) = ('', 0, 0, 'ok');
                if ($name eq 'SUBSCRIBE') {
                    $out = join '', map {
                        "*3\r\n\$9\r\nsubscribe\r\n\$" . length($argv->[$_]) . "\r\n$argv->[$_]\r\n:$_\r\n"
                    } 1 .. $#$argv;
                } else {
                    my $mode = 'ok';
                    if ($name eq 'EVALSHA' && open my $fh, '<', "$dir/mode") {
                        $mode = <$fh> // 'ok';
                        if ($mode =~ s/^slow:(\d+):(\d+)$/slow/) {
                            $delay = $1 / 1000 if ++$slow_seq % $2 == 0;
                        }
                    }
                    if ($ANSWER{$mode}) {
                        $out = $ANSWER{$mode};
                        $end = $mode eq 'close_mid';
                    } else {
                        $c->{up} //= {
                            sock => IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                PeerPort => $redis_port, Proto => 'tcp')
                                || die "connect to the real redis: $!\n"
                        };
                        syswrite $c->{up}{sock}, _enc(@$argv);
                        $out = _reply($c->{up});
                        $out .= $out if $mode eq 'surplus';
                    }
                    $mode_of_cmd = $mode;
                }
                if ($mode_of_cmd eq 'hold') {
                    push @{ $c->{out} }, [$forever, $out];
                    print $ev 'held ' . scalar(grep { $_->[0] == $forever } @{ $c->{out} }) . "\n";
                    next;
                }
                if ($delay || @{ $c->{out} }) {
                    my $due = time + $delay;
                    $due = $c->{out}[-1][0] if @{ $c->{out} } && $c->{out}[-1][0] > $due;
                    push @{ $c->{out} }, [$due, $out];
                    next;
                }
                $write->($s, $out);
                if ($end) {
                    $close->($c);
                    last;
                }
            }
        }
    }
}

1;
