package Throttle::App;

# A real HTTP/1.1 upstream application for the integration tests (core Perl only): it counts
# every request it receives, so a test of a response cache in front of it (proxy_pass) can
# tell a cache hit (the application saw nothing) from a miss.
#
#   my $t = Throttle::Test->new;
#   my $app = Throttle::App->new(t => $t)->start;     # also registered as $t->app
#   $t->write_conf(<<'EOF')->run;
#   http {
#       server {
#           listen 127.0.0.1:%%PORT%%;
#           location / { proxy_pass http://127.0.0.1:%%APP_PORT%%; }
#       }
#   }
#   EOF
#   my $r = $t->get('/api/x?_cc=max-age%3D60&_size=1000', Cookie => 'sessionid=abc');
#   is($app->count('/api/x'), 1, 'one request reached the application');
#   is(Throttle::App::parse_body($r->{body})->{n}, 1, 'body made by request 1');
#
# The server is a separate process (perl, exec'd, in its own process group) listening on a
# free loopback port; it forks one child per connection (keep-alive, HTTP/1.0 and 1.1, request
# bodies by Content-Length or chunked). Every request is appended, under flock, to
# requests.log in the application's directory with a sequence number n that increases across
# all children (and across reset). Query arguments whose names start with "_" choose the
# response (t/README.md: _status, _delay, _size, _cc, _setcookie, _vary, _xae, _inv, _hdr, _ct,
# _gzip, _chunked, _abort, _bodydelay, _etag, _lm). The process group is stopped with the
# object, and at END whatever happens to the test.

use strict;
use warnings;

use Cwd ();
use Errno qw(EINTR EAGAIN EWOULDBLOCK);
use Fcntl qw(:flock F_SETFD O_RDWR O_WRONLY O_CREAT O_APPEND SEEK_SET);
use File::Basename ();
use File::Path ();
use File::Spec;
use File::Temp ();
use IO::Handle;
use IO::Select;
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Scalar::Util ();
use Socket qw(SOL_SOCKET SO_REUSEADDR);
use Time::HiRes qw(time sleep);

my $LIB = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/..');    # t/lib
my %LIVE;    # "pid" => weakened object, for END
my $SEQ = 0;

my $FILL = join '', 'a' .. 'z', 'A' .. 'Z';    # 52 bytes: see pattern()

my %REASON = (
    200 => 'OK', 201 => 'Created', 202 => 'Accepted', 203 => 'Non-Authoritative Information',
    204 => 'No Content', 206 => 'Partial Content', 301 => 'Moved Permanently', 302 => 'Found',
    303 => 'See Other', 304 => 'Not Modified', 307 => 'Temporary Redirect',
    308 => 'Permanent Redirect', 400 => 'Bad Request', 401 => 'Unauthorized',
    403 => 'Forbidden', 404 => 'Not Found', 405 => 'Method Not Allowed', 409 => 'Conflict',
    410 => 'Gone', 412 => 'Precondition Failed', 413 => 'Content Too Large',
    418 => "I'm a teapot", 429 => 'Too Many Requests', 431 => 'Request Header Fields Too Large',
    500 => 'Internal Server Error', 501 => 'Not Implemented', 502 => 'Bad Gateway',
    503 => 'Service Unavailable', 504 => 'Gateway Timeout',
);

# ---------------------------------------------------------------------------------------
# construction and process

# Options: t => Throttle::Test (directory under its temp dir; the app is registered as the
# test's default app, for %%APP_PORT%%, unless it has one), dir => directory, port => (default:
# a free loopback port), keepalive_timeout => 60 (seconds an idle connection is kept).
# Does not start the server: call start.
sub new {
    my ($class, %opt) = @_;
    my $self = bless {
        port              => $opt{port},
        keepalive_timeout => $opt{keepalive_timeout} // 60,
        owner             => $$,
        starts            => 0,
    }, $class;

    my $n = ++$SEQ;
    if ($opt{dir}) {
        $self->{dir} = $opt{dir};
    } elsif ($opt{t}) {
        $self->{dir} = $opt{t}->testdir . "/app-$n";
    } else {
        my $base = $ENV{TEST_NGINX_TMPDIR} // File::Spec->tmpdir;
        $self->{tmp} = File::Temp->newdir('throttle-app-XXXXXX', DIR => $base,
            CLEANUP => !$ENV{TEST_NGINX_LEAVE});
        $self->{dir} = "$self->{tmp}";
    }
    File::Path::make_path($self->{dir});
    $opt{t}->app($self) if $opt{t} && $opt{t}->can('app') && !$opt{t}->app;
    return $self;
}

sub port     { $_[0]{port} }
sub address  { "127.0.0.1:$_[0]{port}" }
sub url      { "http://127.0.0.1:$_[0]{port}" . ($_[1] // '/') }
sub pid      { $_[0]{pid} }
sub pgid     { $_[0]{pgid} }
sub dir      { $_[0]{dir} }
sub running  { defined $_[0]{pid} }
sub log_path { "$_[0]{dir}/app.log" }
sub log      { _slurp($_[0]->log_path) }    # the server's stderr (warnings, errors)

# Replaces %%APP%% (127.0.0.1:PORT) and %%APP_PORT%% in a text (Throttle::Test->app does it
# for configs by itself).
sub fill {
    my ($self, $text) = @_;
    my ($addr, $port) = ($self->address, $self->{port});
    $text =~ s/%%APP%%/$addr/g;
    $text =~ s/%%APP_PORT%%/$port/g;
    return $text;
}

# A listening socket on 127.0.0.1: on $self->{port} when set (a restart), else on a free port
# in the harness's range (below the ephemeral ports; not one Throttle::Test handed out).
sub _listen {
    my ($self) = @_;
    my %sock = (LocalAddr => '127.0.0.1', Proto => 'tcp', Listen => 4096, ReuseAddr => 1);
    if ($self->{port}) {
        my $s = IO::Socket::INET->new(%sock, LocalPort => $self->{port})
            or die "Throttle::App: listen on 127.0.0.1:$self->{port}: $!\n";
        return $s;
    }
    no warnings 'once';
    for (1 .. 1000) {
        my $port = 20000 + int(rand(12000));
        next if $Throttle::Test::SEEN_PORT{$port};
        my $s = IO::Socket::INET->new(%sock, LocalPort => $port) or next;
        $Throttle::Test::SEEN_PORT{$port} = 1;
        $self->{port} = $port;
        return $s;
    }
    die "Throttle::App: no free port found\n";
}

# Starts the server (a no-op when it runs) and waits until it accepts; returns $self.
# Counts and the sequence number survive a stop/start (same directory, same port).
sub start {
    my ($self) = @_;
    return $self if $self->{pid};
    die "Throttle::App: start in a forked child\n" if $$ != $self->{owner};
    my $dir = $self->{dir};
    File::Path::make_path($dir);
    for my $f ('seq', 'requests.log') {
        sysopen my $fh, "$dir/$f", O_WRONLY | O_CREAT or die "Throttle::App: $dir/$f: $!\n";
    }
    my $listen = $self->_listen;
    pipe my $rd, my $wr or die "pipe: $!\n";

    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        close $rd;
        setpgrp(0, 0);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$dir/app.log" or POSIX::_exit(126);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
        fcntl($_, F_SETFD, 0) for $listen, $wr;    # keep both across exec
        exec { $^X } $^X, "-I$LIB", '-MThrottle::App', '-e', 'Throttle::App::_server(@ARGV)',
            '--', fileno($listen), fileno($wr), $dir, $self->{keepalive_timeout}
            or POSIX::_exit(127);
    }
    eval { setpgrp($pid, $pid) };    # also here: no race with a stop right after start
    close $wr;
    close $listen;
    $self->{pid} = $self->{pgid} = $pid;
    $self->{starts}++;
    $LIVE{$pid} = $self;
    Scalar::Util::weaken($LIVE{$pid});

    my $sel = IO::Select->new($rd);
    my $got = '';
    my $deadline = time + 15;
    while ($got !~ /\n/) {
        my $left = $deadline - time;
        if ($left > 0 && $sel->can_read($left)) {
            my $n = sysread $rd, $got, 64, length $got;
            next if $n || (!defined $n && $! == EINTR);
        }
        $self->stop;
        die "Throttle::App: the server did not start:\n" . $self->log;
    }
    close $rd;
    return $self;
}

# Stops the server and every connection process (SIGTERM to the server, which ends and reaps
# its children; SIGKILL to the whole process group after 5 s) and reaps it. No process of the
# group is left.
sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return $self;
    return $self if $$ != $self->{owner};
    my $pg = $self->{pgid};
    CORE::kill 'CONT', -$pg;
    CORE::kill 'TERM', $pid;
    my $deadline = time + 5;
    my $reaped = 0;
    while (time < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) { $reaped = 1; last }
        sleep 0.005;
    }
    CORE::kill 'KILL', -$pg;    # whatever is left of the group (normally nothing)
    waitpid $pid, 0 unless $reaped;
    $deadline = time + 5;
    sleep 0.005 while $self->processes && time < $deadline;
    delete $LIVE{$pid};
    delete $self->{pid};
    return $self;
}

# Stops (if running) and starts again on the same port; counts are kept.
sub restart { $_[0]->stop->start }

# SIGSTOP / SIGCONT to the whole group: a server that hangs (connections are queued by the
# kernel, nothing answers).
sub pause  { CORE::kill 'STOP', -$_[0]{pgid} if $_[0]{pid}; $_[0] }
sub resume { CORE::kill 'CONT', -$_[0]{pgid} if $_[0]{pid}; $_[0] }

# Pids of the processes (zombies included) in the server's process group: the server and
# one per open connection. Empty after stop.
sub processes {
    my ($self) = @_;
    my $pg = $self->{pgid} or return;
    my @pids;
    opendir my $dh, '/proc' or return;
    for my $p (readdir $dh) {
        next unless $p =~ /^\d+$/;
        open my $fh, '<', "/proc/$p/stat" or next;
        my $stat = <$fh> // next;
        my ($pgrp) = $stat =~ /\)\s+\S\s+\d+\s+(\d+)/ or next;
        push @pids, $p if $pgrp == $pg;
    }
    return @pids;
}

sub DESTROY {
    my ($self) = @_;
    return if $$ != ($self->{owner} // 0);
    local ($?, $!, $@);
    $self->stop if $self->{pid};
}

END {
    for my $app (grep { defined } values %LIVE) {
        local $?;
        $app->stop;
    }
}

# ---------------------------------------------------------------------------------------
# counts

# Every request recorded since the last reset, in arrival order, as hashrefs:
# { n, method, uri (path and query, as received), path, query, version ('1.1'), cookie,
# authorization, tag (X-Test-Tag), time (epoch seconds, when it was read), body_length, body,
# headers => { lowercase name => value } }. Absent headers give ''. With a filter (as count),
# the matching ones.
sub requests {
    my ($self, $filter) = @_;
    my @all;
    my $dir = $self->{dir};
    open my $lk, '<', "$dir/seq" or return;
    flock $lk, LOCK_SH;
    my $text = _slurp("$dir/requests.log");
    close $lk;
    for my $line (split /\n/, $text) {
        my @f = map { _unesc($_) } split /\t/, $line, -1;
        next unless @f >= 11;
        my %h;
        for (split /\n/, $f[9]) {
            my ($k, $v) = /^([^:]*): (.*)$/s or next;
            $h{$k} = $v;
        }
        my ($path, $query) = split /\?/, $f[2], 2;
        push @all, {
            n => $f[0], method => $f[1], uri => $f[2], path => $path, query => $query // '',
            version => $f[3], cookie => $f[4], authorization => $f[5], tag => $f[6],
            time => $f[7], body_length => $f[8], headers => \%h, body => $f[10],
        };
    }
    return @all unless defined $filter;
    return grep { _match($filter, $_) } @all;
}

# Filters: undef (all), qr/.../ (matched against the uri: path and query), a string (the path
# equals it), a code ref (called with the request's hashref).
sub _match {
    my ($filter, $r) = @_;
    return $filter->($r) if ref $filter eq 'CODE';
    return $r->{uri} =~ $filter if ref $filter eq 'Regexp';
    return $r->{path} eq $filter;
}

# Number of requests received since the last reset (matching the filter, see requests).
sub count {
    my ($self, $filter) = @_;
    my @r = $self->requests($filter);
    return scalar @r;
}

# The last request received (hashref, see requests), or undef.
sub last_request {
    my ($self, $filter) = @_;
    my @r = $self->requests($filter);
    return $r[-1];
}

# Forgets the recorded requests (count is 0 again); the sequence number n keeps increasing.
sub reset {
    my ($self) = @_;
    my $dir = $self->{dir};
    open my $lk, '<', "$dir/seq" or die "Throttle::App: $dir/seq: $!\n";
    flock $lk, LOCK_EX;
    open my $fh, '>', "$dir/requests.log" or die "Throttle::App: $dir/requests.log: $!\n";
    close $fh;
    close $lk;
    return $self;
}

# The last sequence number handed out (0 before the first request).
sub seq {
    my ($self) = @_;
    my $s = _slurp("$self->{dir}/seq");
    return $s =~ /(\d+)/ ? $1 + 0 : 0;
}

# Polls until count($filter) >= $n (a request handled in the background, e.g. a cache
# update); returns the count reached. Options: timeout => 10 (seconds).
sub wait_for_count {
    my ($self, $n, $filter, %opt) = @_;
    my $deadline = time + ($opt{timeout} // 10);
    while (1) {
        my $c = $self->count($filter);
        return $c if $c >= $n || time > $deadline;
        sleep 0.01;
    }
}

# ---------------------------------------------------------------------------------------
# bodies

# The body filler: bytes [$offset, $offset + $len) of an endless text made of 64-byte lines,
# the line at offset k being sprintf('%010d', k) . ' ' . 'a'..'z' 'A'..'Z' . "\n". A body of
# _size=N is its JSON line followed by pattern(length of the line, N - that length).
sub pattern {
    my ($off, $len) = @_;
    return '' if $len <= 0;
    my $first = int($off / 64);
    my $last = int(($off + $len - 1) / 64);
    my $s = join '', map { sprintf('%010d', $_ * 64) . " $FILL\n" } $first .. $last;
    return substr $s, $off - $first * 64, $len;
}

# The body the application sends for request n (before gzip): the JSON line, padded with
# pattern() or cut to $size bytes when $size is defined.
sub make_body {
    my ($n, $method, $uri, $cookie, $auth, $size) = @_;
    my $line = '{"n":' . $n . ',"method":' . _js($method) . ',"uri":' . _js($uri)
        . ',"cookie":' . _js($cookie // '') . ',"authorization":' . _js($auth // '') . "}\n";
    return $line unless defined $size;
    return substr $line, 0, $size if $size <= length $line;
    return $line . pattern(length $line, $size - length $line);
}

# What a (decompressed) body says about the request that produced it: { n, method, uri,
# cookie, authorization, length, pattern_ok } (pattern_ok: the bytes after the JSON line are
# exactly the filler); undef when it is not a body of this application. A body cut by _size
# shorter than its JSON line gives at least n when the cut leaves it.
sub parse_body {
    my ($body) = @_;
    return undef unless defined $body;
    my $str = qr/"((?:[^"\\]|\\.)*)"/;
    if ($body =~ /^\{"n":(\d+),"method":$str,"uri":$str,"cookie":$str,"authorization":$str\}\n/) {
        my $r = { n => $1 + 0, method => _unjs($2), uri => _unjs($3), cookie => _unjs($4),
            authorization => _unjs($5), length => length $body };
        my $head = $+[0];
        $r->{pattern_ok} = substr($body, $head) eq pattern($head, length($body) - $head) ? 1 : 0;
        return $r;
    }
    return { n => $1 + 0, length => length $body, pattern_ok => 0 } if $body =~ /^\{"n":(\d+)[,}]/;
    return undef;
}

sub _js {
    my ($s) = @_;
    $s =~ s/(["\\])/\\$1/g;
    $s =~ s/([\x00-\x1f])/sprintf('\\u%04x', ord $1)/ge;
    return qq("$s");
}

sub _unjs {
    my ($s) = @_;
    $s =~ s/\\(?:u([0-9a-fA-F]{4})|(.))/defined $1 ? chr hex $1 : $2/ge;
    return $s;
}

# ---------------------------------------------------------------------------------------
# a plain client (no nginx involved)

# One request straight to the application, on its own connection (Connection: close).
# Returns what Throttle::Test::request returns ({ status, headers, header_list, body, raw,
# error }). Options: timeout => 10.
sub request {
    my ($self, $method, $path, $headers, $body, %opt) = @_;
    require Throttle::Test;
    my $req = "$method $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
    my @h = ref $headers eq 'HASH' ? map { ($_, $headers->{$_}) } sort keys %$headers
        : @{ $headers // [] };
    $req .= 'Content-Length: ' . length($body) . "\r\n"
        if defined $body && !grep { /^(?:content-length|transfer-encoding)$/i } @h;
    for (my $i = 0; $i < @h; $i += 2) { $req .= "$h[$i]: $h[$i + 1]\r\n" }
    $req .= "\r\n" . ($body // '');
    my $timeout = $opt{timeout} // 10;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $self->{port},
        Proto => 'tcp', Timeout => $timeout)
        or return { status => 0, error => "connect: $!", headers => {}, body => '' };
    _write_all($s, $req);
    my ($raw, $sel, $deadline) = ('', IO::Select->new($s), time + $timeout);
    while (1) {
        my $left = $deadline - time;
        last if $left <= 0 || !$sel->can_read($left);
        my $n = sysread $s, $raw, 65536, length $raw;
        next if !defined $n && $! == EINTR;
        last unless $n;
    }
    close $s;
    return Throttle::Test::parse_response($raw, $method eq 'HEAD');
}

sub get {
    my ($self, $path, @headers) = @_;
    return $self->request('GET', $path, \@headers);
}

# ---------------------------------------------------------------------------------------
# the server (runs in its own process, exec'd by start)

sub _server {
    my ($lfd, $rfd, $dir, $keepalive) = @_;
    $0 = "throttle-app $dir";
    $SIG{PIPE} = 'IGNORE';
    open my $listen, '+<&=', $lfd or die "fdopen listen $lfd: $!\n";
    open my $ready, '>&=', $rfd or die "fdopen ready $rfd: $!\n";
    $listen->blocking(0);

    my $stop = 0;
    $SIG{$_} = sub { $stop = 1 } for qw(TERM INT HUP);
    my %kids;
    my $sel = IO::Select->new($listen);
    syswrite $ready, "ready $$\n";
    close $ready;

    while (!$stop) {
        if ($sel->can_read(0.2)) {
            while (!$stop && accept(my $c, $listen)) {
                my $pid = fork;
                if (!defined $pid) {    # out of processes: drop this one, let some end
                    close $c;
                    sleep 0.01;
                    last;
                }
                if ($pid == 0) {
                    $SIG{$_} = 'DEFAULT' for qw(TERM INT HUP);
                    close $listen;
                    eval { _connection($c, $dir, $keepalive) };
                    print STDERR "throttle-app connection $$: $@" if $@;
                    POSIX::_exit(0);
                }
                $kids{$pid} = 1;
                close $c;
            }
        }
        while ((my $k = waitpid(-1, WNOHANG)) > 0) { delete $kids{$k} }
    }

    close $listen;
    kill 'TERM', keys %kids;
    my $deadline = time + 3;
    while (%kids) {
        while ((my $k = waitpid(-1, WNOHANG)) > 0) { delete $kids{$k} }
        last unless %kids;
        if (time > $deadline) {
            kill 'KILL', keys %kids;
            waitpid $_, 0 for keys %kids;
            last;
        }
        sleep 0.005;
    }
    POSIX::_exit(0);
}

sub _write_all {
    my ($fh, $data) = @_;
    while (length $data) {
        my $n = syswrite $fh, $data;
        if (!defined $n) {
            next if $! == EINTR || $! == EAGAIN || $! == EWOULDBLOCK;
            return 0;
        }
        substr $data, 0, $n, '';
    }
    return 1;
}

sub _decode {
    my ($s) = @_;
    $s =~ tr/+/ /;
    $s =~ s/%([0-9a-fA-F]{2})/chr hex $1/ge;
    return $s;
}

sub _http_date {
    my ($t) = @_;
    return POSIX::strftime('%a, %d %b %Y %H:%M:%S GMT', gmtime $t);
}

# One connection: requests until the client closes, asks to close, or stays idle.
sub _connection {
    my ($c, $dir, $keepalive) = @_;
    binmode $c;
    $c->blocking(1);
    my $buf = '';
    my $sel = IO::Select->new($c);
    my $more = sub {    # reads more into $buf; false on EOF, error or timeout
        my ($timeout) = @_;
        while (1) {
            return 0 unless $sel->can_read($timeout);
            my $n = sysread $c, $buf, 65536, length $buf;
            next if !defined $n && $! == EINTR;
            return $n;
        }
    };
    my $bad = sub {
        my ($status) = @_;
        _write_all($c, "HTTP/1.1 $status " . ($REASON{$status} // 'Error')
            . "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };

    while (1) {
        # request head
        while (1) {
            $buf =~ s/^(?:\r?\n)+//;
            last if $buf =~ /\r?\n\r?\n/;
            return $bad->(431) if length $buf > 65536;
            return unless $more->(length $buf ? 30 : $keepalive);
        }
        $buf =~ /\r?\n\r?\n/;
        my $head = substr $buf, 0, $-[0];
        substr $buf, 0, $+[0], '';
        my ($line, @lines) = split /\r?\n/, $head;
        my ($method, $uri, $version) = $line =~ m{^(\S+)\s+(\S+)(?:\s+HTTP/(\d+\.\d+))?\s*$}
            or return $bad->(400);
        $version //= '0.9';
        my (%h, @names);
        for (@lines) {
            my ($k, $v) = /^([^:\s]+)\s*:\s*(.*?)\s*$/ or next;
            $k = lc $k;
            push @names, $k unless exists $h{$k};
            $h{$k} = exists $h{$k} ? $h{$k} . ($k eq 'cookie' ? '; ' : ', ') . $v : $v;
        }

        # request body
        my $body = '';
        if ($h{expect} && $h{expect} =~ /100-continue/i && $version eq '1.1') {
            _write_all($c, "HTTP/1.1 100 Continue\r\n\r\n") or return;
        }
        if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
            while (1) {
                while ($buf !~ /\n/) { return unless $more->(30) }
                $buf =~ s/^([0-9a-fA-F]+)[^\n]*\n// or return $bad->(400);
                my $len = hex $1;
                if ($len == 0) {    # trailer fields, then an empty line
                    while (1) {
                        while ($buf !~ /\n/) { return unless $more->(30) }
                        $buf =~ s/^([^\n]*)\n//;
                        last if $1 =~ /^\r?$/;
                    }
                    last;
                }
                while (length $buf < $len + 2) { return unless $more->(30) }
                $body .= substr $buf, 0, $len, '';
                $buf =~ s/^\r?\n// or return $bad->(400);
            }
        } elsif (defined $h{'content-length'}) {
            return $bad->(400) unless $h{'content-length'} =~ /^\d+$/;
            my $len = $h{'content-length'};
            while (length $buf < $len) { return unless $more->(30) }
            $body = substr $buf, 0, $len, '';
        }

        # record it
        my $n = _record($dir, $method, $uri, $version, \%h, \@names, $body);

        # control arguments
        my (undef, $query) = split /\?/, $uri, 2;
        my (%arg, @hdr, @setcookie);
        for my $pair (split /&/, $query // '') {
            my ($k, $v) = split /=/, $pair, 2;
            $k = _decode($k);
            next unless $k =~ /^_/;
            $v = _decode($v // '');
            if ($k eq '_hdr') { push @hdr, $v }
            elsif ($k eq '_setcookie') { push @setcookie, $v }
            else { $arg{$k} = $v }
        }

        # /_resolve: who the session cookie is (t/61-identity-resolve.t), by its value's prefix
        if ((split /\?/, $uri, 2)[0] eq '/_resolve') {
            my ($sid) = ($h{cookie} // '') =~ /(?:^|;\s*)sessionid=([^;]*)/;
            $sid //= '';
            return if $sid =~ /^close\./;    # no answer at all
            if ($sid =~ /^u([A-Za-z0-9_-]*)\./) { push @hdr, "X-User-Id: $1" }
            elsif ($sid =~ /^plain\./) { }
            elsif ($sid =~ /^e500\./) { $arg{_status} = 500 }
            elsif ($sid =~ /^slow\./) { $arg{_delay} = 3000; push @hdr, 'X-User-Id: 7' }
            elsif ($sid =~ /^big\./) { push @hdr, 'X-User-Id: ' . ('a' x 10240) }
            elsif ($sid =~ /^ctl\./) { push @hdr, "X-User-Id: 4\x012" }
            elsif ($sid =~ /^sp\./) { push @hdr, "X-User-Id: 4 2" }
            elsif ($sid =~ /^two\./) { push @hdr, 'X-User-Id: 1', 'X-User-Id: 2' }
            elsif ($sid =~ /^huge\./) { push @hdr, 'X-Big: ' . ('b' x 65536), 'X-User-Id: 9' }
            else { $arg{_status} = 401 }
        }

        my $keep = $version eq '1.1' ? ($h{connection} // '') !~ /\bclose\b/i
            : ($h{connection} // '') =~ /\bkeep-alive\b/i;
        $keep = 0 if defined $arg{_abort};

        my $status = ($arg{_status} // '') =~ /^[1-9]\d\d$/ ? $arg{_status} : 200;
        my @out;    # header lines
        push @out, "Server: throttle-app", 'Date: ' . _http_date(time);

        my $etag = $arg{_etag};
        $etag = qq("$etag") if defined $etag && $etag !~ /^(?:W\/)?"/;
        my $lm = $arg{_lm};
        $lm = _http_date($lm) if defined $lm && $lm =~ /^\d+$/;
        if ($status == 200 && ($method eq 'GET' || $method eq 'HEAD')) {
            if (defined $etag && defined $h{'if-none-match'}) {
                $status = 304 if grep { $_ eq $etag || $_ eq '*' || "W/$_" eq $etag
                        || $_ eq "W/$etag" } split /\s*,\s*/, $h{'if-none-match'};
            } elsif (defined $lm && defined $h{'if-modified-since'}) {
                $status = 304 if $h{'if-modified-since'} eq $lm;
            }
        }

        my $data = make_body($n, $method, $uri, $h{cookie}, $h{authorization},
            ($arg{_size} // '') =~ /^\d+$/ ? $arg{_size} : undef);
        my $gzip = $arg{_gzip} // '';
        push @out, 'Vary: Accept-Encoding' if $gzip eq 'auto';
        $gzip = ($h{'accept-encoding'} // '') =~ /\bgzip\b/i ? 1 : 0 if $gzip eq 'auto';
        if ($gzip && $gzip ne '0') {
            require IO::Compress::Gzip;
            my $z;
            no warnings 'once';
            IO::Compress::Gzip::gzip(\$data => \$z, Minimal => 1, Time => 0)
                or die "gzip: $IO::Compress::Gzip::GzipError\n";
            $data = $z;
            push @out, 'Content-Encoding: gzip';
        }

        my $no_body = $status == 204 || $status == 304 || $status < 200;
        my $chunked = ($arg{_chunked} // '0') ne '0' && !$no_body;
        my $chunk_size = ($arg{_chunked} // '') =~ /^\d+$/ && $arg{_chunked} > 1
            ? $arg{_chunked} : 4096;
        push @out, 'Content-Type: ' . ($arg{_ct} // 'application/json') unless $no_body;
        if ($chunked) {
            push @out, 'Transfer-Encoding: chunked';
        } elsif (!$no_body) {
            push @out, 'Content-Length: ' . length $data;
        }
        push @out, "Cache-Control: $arg{_cc}"             if defined $arg{_cc};
        push @out, "Set-Cookie: $_"                       for @setcookie;
        push @out, "Vary: $arg{_vary}"                    if defined $arg{_vary};
        push @out, "X-Accel-Expires: $arg{_xae}"          if defined $arg{_xae};
        push @out, "X-Throttle-Invalidate: $arg{_inv}"    if defined $arg{_inv};
        push @out, "ETag: $etag"                          if defined $etag;
        push @out, "Last-Modified: $lm"                   if defined $lm;
        for (@hdr) {
            my ($k, $v) = /^([^:]+):\s*(.*)$/s or next;
            push @out, "$k: $v";
        }
        push @out, "X-App-N: $n", 'Connection: ' . ($keep ? 'keep-alive' : 'close');

        sleep $arg{_delay} / 1000 if ($arg{_delay} // '') =~ /^\d+(?:\.\d+)?$/;

        my $resp = "HTTP/1.1 $status " . ($REASON{$status} // 'Status') . "\r\n"
            . join('', map { "$_\r\n" } @out) . "\r\n";
        $data = '' if $no_body || $method eq 'HEAD';
        my $limit = ($arg{_abort} // '') =~ /^\d+$/ ? $arg{_abort} : undef;

        if (($arg{_bodydelay} // '') =~ /^\d+(?:\.\d+)?$/) {
            _write_all($c, $resp) or return;
            $resp = '';
            sleep $arg{_bodydelay} / 1000;
        }
        if ($chunked && $method ne 'HEAD') {
            my $sent = 0;
            for (my $off = 0; $off < length $data; $off += $chunk_size) {
                my $piece = substr $data, $off, $chunk_size;
                my $cut = defined $limit && $sent + length $piece > $limit;
                $piece = substr $piece, 0, $limit - $sent if $cut;
                $resp .= sprintf('%x', length substr($data, $off, $chunk_size)) . "\r\n" . $piece;
                $sent += length $piece;
                if ($cut) { _write_all($c, $resp); return }
                $resp .= "\r\n";
                if (length $resp >= 65536) { _write_all($c, $resp) or return; $resp = '' }
            }
            if (defined $limit) { _write_all($c, $resp); return }    # cut after the last chunk
            $resp .= "0\r\n\r\n";
        } else {
            $data = substr $data, 0, $limit if defined $limit && $limit < length $data;
            $resp .= $data;
        }
        _write_all($c, $resp) or return;
        return if defined $limit || !$keep;
    }
}

# Appends one request to requests.log under the lock of the seq file, which holds the last
# sequence number; returns the request's number.
sub _record {
    my ($dir, $method, $uri, $version, $h, $names, $body) = @_;
    sysopen my $lk, "$dir/seq", O_RDWR | O_CREAT or die "$dir/seq: $!\n";
    flock $lk, LOCK_EX or die "flock: $!\n";
    sysseek $lk, 0, SEEK_SET;
    my $s = '';
    sysread $lk, $s, 64;
    my $n = ($s =~ /(\d+)/ ? $1 : 0) + 1;
    sysseek $lk, 0, SEEK_SET;
    syswrite $lk, sprintf("%020d\n", $n);
    my $line = join("\t", map { _esc($_) } $n, $method, $uri, $version, $h->{cookie} // '',
        $h->{authorization} // '', $h->{'x-test-tag'} // '', sprintf('%.6f', time),
        length $body, join("\n", map { "$_: $h->{$_}" } @$names),
        length $body > 1048576 ? substr($body, 0, 1048576) : $body) . "\n";
    sysopen my $log, "$dir/requests.log", O_WRONLY | O_APPEND | O_CREAT
        or die "$dir/requests.log: $!\n";
    _write_all($log, $line);
    close $log;
    close $lk;
    return $n;
}

sub _esc {
    my ($s) = @_;
    $s =~ s/\\/\\\\/g;
    $s =~ s/\t/\\t/g;
    $s =~ s/\n/\\n/g;
    $s =~ s/\r/\\r/g;
    return $s;
}

sub _unesc {
    my ($s) = @_;
    my %m = (t => "\t", n => "\n", r => "\r", '\\' => '\\');
    $s =~ s/\\([tnr\\])/$m{$1}/g;
    return $s;
}

sub _slurp {
    my ($path) = @_;
    open my $fh, '<', $path or return '';
    binmode $fh;
    local $/;
    return <$fh> // '';
}

1;
