package Throttle::Test;

# A small nginx-tests style harness for ngx_http_throttle_module (core Perl only).
#
#   my $t = Throttle::Test->new->write_conf(<<'EOF')->run;
#   http {
#       throttle_zone $binary_remote_addr zone=one:1m rate=5r/m;
#       server {
#           listen 127.0.0.1:%%PORT%%;
#           location / { throttle zone=one; root %%TESTDIR%%; }
#       }
#   }
#   EOF
#   is($t->get('/')->{status}, 200, 'first request passes');
#   $t->done;    # stops nginx, checks error.log, done_testing
#
# The test supplies the http block (and may add main-context directives written at
# column 0); the harness writes the rest of the main context: load_module, daemon off,
# worker_processes, user root, pid, error_log, events, and temp paths and an access log
# inside the http block. Placeholders: %%PORT%% (= %%PORT_1%%), %%PORT_2%%, ... (free
# loopback ports), %%TESTDIR%% (the temp directory), %%MODULE%% (the module's path),
# %%APP_PORT%% / %%APP%% (port / 127.0.0.1:port of the Throttle::App given to app()).
#
# Environment: TEST_NGINX_BINARY (default /usr/sbin/nginx), TEST_NGINX_MODULE (default
# <repo>/build/ngx_http_throttle_module.so), TEST_NGINX_LEAVE=1 (keep the temp dir),
# TEST_NGINX_CATLOG=1 (print error.log at teardown), TEST_NGINX_LOG_LEVEL (error_log
# level, default info), TEST_NGINX_TMPDIR (where temp dirs go), TEST_NGINX_PRELOAD (LD_PRELOAD
# for nginx only: the sanitizer runtimes a module built by `make asan` needs).

use strict;
use warnings;

use Cwd ();
use Errno qw(EINPROGRESS EWOULDBLOCK EAGAIN EINTR EISCONN EALREADY);
use File::Basename ();
use File::Copy ();
use File::Path ();
use File::Spec;
use File::Temp ();
use IO::Select;
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Socket qw(PF_INET SOCK_STREAM SOL_SOCKET SO_ERROR inet_aton sockaddr_in);
use Test::More ();
use Time::HiRes qw(time sleep);

our $REPO = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/../../..');

# Ports handed out in this process (several instances per test file; Throttle::App marks
# its ports here too).
our %SEEN_PORT;

my @BAD_LOG = (
    qr/\[(?:alert|crit|emerg)\]/,
    qr/AddressSanitizer|LeakSanitizer|ThreadSanitizer|UndefinedBehaviorSanitizer/,
    qr/runtime error:/,
);

# ---------------------------------------------------------------------------------------
# construction and configuration

# Options: workers => 4, module => 1 (load the module; 0 for plain nginx),
# log_level => 'info', binary => ..., module_path => ....
# When the module is wanted but not built, the whole test file is skipped.
sub new {
    my ($class, %opt) = @_;

    my $self = bless {
        workers     => $opt{workers} // 4,
        module      => $opt{module} // 1,
        log_level   => $opt{log_level} // $ENV{TEST_NGINX_LOG_LEVEL} // 'info',
        binary      => $opt{binary} // $ENV{TEST_NGINX_BINARY} // '/usr/sbin/nginx',
        module_path => $opt{module_path} // $ENV{TEST_NGINX_MODULE}
            // "$REPO/build/ngx_http_throttle_module.so",
        ports       => {},
        allow       => [],
        allow_level => {},
        owner       => $$,
        nt          => 0,
    }, $class;

    $self->{module_path} = Cwd::abs_path($self->{module_path}) // $self->{module_path};

    Test::More::plan(skip_all => "no nginx binary at $self->{binary} (set TEST_NGINX_BINARY)")
        unless -x $self->{binary};
    Test::More::plan(skip_all => "module not built: $self->{module_path} (run make, or set "
            . "TEST_NGINX_MODULE)")
        if $self->{module} && !-f $self->{module_path};

    my $base = $ENV{TEST_NGINX_TMPDIR} // File::Spec->tmpdir;
    $self->{tmp} = File::Temp->newdir('throttle-test-XXXXXX', DIR => $base,
        CLEANUP => !$ENV{TEST_NGINX_LEAVE});
    $self->{dir} = "$self->{tmp}";
    chmod 0755, $self->{dir};

    # Load a private copy: a rebuild of the module while the test runs (a reload loads the
    # file again) must not mix two builds in one test.
    if ($self->{module}) {
        my $copy = "$self->{dir}/" . File::Basename::basename($self->{module_path});
        File::Copy::copy($self->{module_path}, $copy)
            or die "copy $self->{module_path}: $!\n";
        $self->{module_source} = $self->{module_path};
        $self->{module_path} = $copy;
    }

    $SIG{INT}  //= sub { exit 130 };
    $SIG{TERM} //= sub { exit 143 };
    $SIG{PIPE} = 'IGNORE';

    return $self;
}

sub testdir     { $_[0]{dir} }
sub module_path { $_[0]{module_path} }
sub error_log_path { "$_[0]{dir}/error.log" }
sub pid         { $_[0]{pid} }
sub running     { defined $_[0]{pid} }

# Chainable setters, for use before run().
sub workers    { $_[0]{workers} = $_[1]; $_[0] }
sub no_module  { $_[0]{module} = 0; $_[0] }
sub log_level  { $_[0]{log_level} = $_[1]; $_[0] }

# A Throttle::App (or anything with a port method) whose port fills %%APP_PORT%% and
# 127.0.0.1:port %%APP%% in configs; app($app, 2) fills %%APP_PORT_2%% and %%APP_2%%.
# Without an object, returns the app of that index (default 1).
sub app {
    my ($self, $app, $i) = @_;
    return $self->{apps}{ $app // 1 } unless ref $app;
    $self->{apps}{ $i // 1 } = $app;
    return $self;
}

sub _app_subst {
    my ($self, $port_only, $i) = @_;
    my $name = '%%APP' . ($port_only ? '_PORT' : '') . (defined $i ? "_$i" : '') . '%%';
    my $app = $self->{apps}{ $i // 1 }
        or die "placeholder $name in config but no app registered (\$t->app(\$app))\n";
    return $port_only ? $app->port : '127.0.0.1:' . $app->port;
}

# Skips the whole test file unless this process may open $n more descriptors.
sub need_fds {
    my ($self, $n) = @_;
    my $limit = _nofile_limit();
    Test::More::plan(skip_all => "needs $n open files, RLIMIT_NOFILE is $limit "
            . "(raise it with ulimit -n)")
        if defined $limit && $limit < $n + 64;
    return $self;
}

# The error log may contain lines matching $re (they are not reported at teardown).
sub allow {
    my ($self, @re) = @_;
    push @{ $self->{allow} }, @re;
    return $self;
}

# Lines at this level ('alert', 'crit', 'emerg') are expected: not reported at teardown.
sub expect_log_level {
    my ($self, @levels) = @_;
    $self->{allow_level}{$_} = 1 for @levels;
    return $self;
}

# A free loopback port, the same one for the same index for the life of the object.
sub port {
    my ($self, $i) = @_;
    $i //= 1;
    return $self->{ports}{$i} //= _free_port();
}

sub _free_port {
    for (1 .. 1000) {
        # Below the kernel's ephemeral range (32768-60999), so client sockets do not take it.
        my $port = 20000 + int(rand(12000));
        next if $SEEN_PORT{$port};
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port,
            Proto => 'tcp', Listen => 1) or next;
        close $s;
        $SEEN_PORT{$port} = 1;
        return $port;
    }
    die "no free port found\n";
}

sub _subst {
    my ($self, $text) = @_;
    $text =~ s/%%PORT%%/$self->port(1)/ge;
    $text =~ s/%%PORT_(\d+)%%/$self->port($1)/ge;
    $text =~ s/%%TESTDIR%%/$self->{dir}/g;
    $text =~ s/%%MODULE%%/$self->{module_path}/g;
    $text =~ s/%%APP(_PORT)?(?:_(\d+))?%%/$self->_app_subst($1, $2)/ge;
    die "unknown placeholder $1 in config\n" if $text =~ /(%%\w+%%)/;
    return $text;
}

# Builds a full nginx.conf from the test's text.
sub _full_conf {
    my ($self, $text, $errlog) = @_;
    my $d = $self->{dir};
    $text = $self->_subst($text);

    my $has = sub { $text =~ /^$_[0]\b/m };    # main-context directive written at column 0
    my @main;
    push @main, "load_module $self->{module_path};"
        if $self->{module} && !$has->('load_module');
    push @main, 'daemon off;'             unless $has->('daemon');
    push @main, 'master_process on;'      unless $has->('master_process');
    push @main, "worker_processes $self->{workers};" unless $has->('worker_processes');
    push @main, 'user root;' if $> == 0 && !$has->('user');
    push @main, "pid $d/nginx.pid;"       unless $has->('pid');
    push @main, "error_log $errlog $self->{log_level};";
    push @main, 'events { worker_connections 4096; }' unless $has->('events');

    my $paths = join '', map { "    $_\n" } (
        "client_body_temp_path $d/client_body_temp;",
        "proxy_temp_path $d/proxy_temp;",
        "fastcgi_temp_path $d/fastcgi_temp;",
        "uwsgi_temp_path $d/uwsgi_temp;",
        "scgi_temp_path $d/scgi_temp;",
        "access_log $d/access.log;",
    );
    $text =~ s/^(\s*http\s*\{)/$1\n$paths/m;

    return "# generated by Throttle::Test\n" . join("\n", @main) . "\n\n" . $text;
}

sub write_conf {
    my ($self, $text) = @_;
    $self->{conf_text} = $text;
    $self->{expect_workers} = $text =~ /^master_process\s+off/m ? 0
        : $text =~ /^worker_processes\s+(\d+)/m ? $1 : $self->{workers};
    $self->write_file('nginx.conf', $self->_full_conf($text, "$self->{dir}/error.log"));
    return $self;
}

sub conf_path { "$_[0]{dir}/nginx.conf" }

sub write_file {
    my ($self, $name, $content) = @_;
    my $path = $name =~ m{^/} ? $name : "$self->{dir}/$name";
    File::Path::make_path(File::Basename::dirname($path));
    open my $fh, '>', $path or die "write $path: $!\n";
    binmode $fh;
    print $fh $content;
    close $fh or die "close $path: $!\n";
    return $self;
}

sub read_file {
    my ($self, $name) = @_;
    my $path = $name =~ m{^/} ? $name : "$self->{dir}/$name";
    open my $fh, '<', $path or return '';
    binmode $fh;
    local $/;
    my $s = <$fh>;
    return $s // '';
}

# ---------------------------------------------------------------------------------------
# nginx -t

# Runs `nginx -t` on a config (same template rules as write_conf).
# Returns (exit_ok, output); in scalar context, exit_ok.
sub nginx_t {
    my ($self, $text) = @_;
    my $n = ++$self->{nt};
    my $log = "$self->{dir}/nginx-t-$n.log";
    my $conf = "$self->{dir}/nginx-t-$n.conf";
    $self->write_file($conf, $self->_full_conf($text, $log));
    my $out = "$self->{dir}/nginx-t-$n.out";
    my $rc = $self->_system_to($out, $self->{binary}, '-t', '-p', "$self->{dir}/",
        '-e', $log, '-c', $conf);
    my $output = $self->read_file($out);
    return wantarray ? ($rc == 0, $output) : $rc == 0;
}

# In a child about to exec nginx: the sanitizer runtimes, when the module was built with them.
sub _preload {
    $ENV{LD_PRELOAD} = $ENV{TEST_NGINX_PRELOAD} if $ENV{TEST_NGINX_PRELOAD};
}

sub _system_to {
    my ($self, $out, @cmd) = @_;
    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', $out or POSIX::_exit(126);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
        _preload();
        exec { $cmd[0] } @cmd or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    return $?;
}

# ---------------------------------------------------------------------------------------
# start, reload, stop

sub run {
    my ($self) = @_;
    die "nginx already running\n" if $self->{pid};
    die "write_conf before run\n" unless defined $self->{conf_text};

    unlink "$self->{dir}/nginx.pid";
    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$self->{dir}/stderr.log" or POSIX::_exit(126);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
        _preload();
        exec { $self->{binary} } $self->{binary}, '-p', "$self->{dir}/",
            '-e', "$self->{dir}/error.log", '-c', $self->conf_path
            or POSIX::_exit(127);
    }
    $self->{pid} = $pid;

    my $uses_port = $self->{conf_text} =~ /%%PORT(?:_1)?%%/;
    my $deadline = time + 15;
    while (1) {
        if (waitpid($pid, WNOHANG) == $pid) {
            my $st = $?;
            delete $self->{pid};
            die "nginx exited at start (status $st):\n"
                . $self->read_file('error.log') . $self->read_file('stderr.log');
        }
        my $ready = -s "$self->{dir}/nginx.pid"
            && $self->_workers(1) >= $self->{expect_workers};
        if ($ready && $uses_port) {
            my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                PeerPort => $self->port(1), Proto => 'tcp');
            $ready = defined $s;
        }
        last if $ready;
        if (time > $deadline) {
            $self->stop;
            die "nginx did not start serving within 15s:\n" . $self->read_file('error.log');
        }
        sleep 0.01;
    }
    return $self;
}

# Sends SIGHUP and waits until either the new configuration serves (every old worker has
# exited and the new ones are up: returns 1) or the master refused the new configuration
# (an [emerg] after the signal: returns 0). Write the new config first with write_conf.
sub reload {
    my ($self, %opt) = @_;
    die "nginx not running\n" unless $self->{pid};
    my %old = map { $_ => 1 } $self->_workers;
    my $mark = $self->log_mark;
    kill 'HUP', $self->{pid} or die "kill HUP: $!\n";

    my $deadline = time + ($opt{timeout} // 15);
    while (1) {
        if ($self->log_since($mark) =~ /\[emerg\]/) {
            return 0;
        }
        my @now = $self->_workers;
        my $new = grep { !$old{$_} } @now;
        my $left = grep { $old{$_} } @now;
        return 1 if $left == 0 && $new >= $self->{expect_workers};
        die "reload did not finish within the deadline:\n" . $self->log_since($mark)
            if time > $deadline;
        if (waitpid($self->{pid}, WNOHANG) == $self->{pid}) {
            delete $self->{pid};
            die "nginx master exited during reload:\n" . $self->log_since($mark);
        }
        sleep 0.01;
    }
}

# Graceful shutdown (SIGQUIT) without escalation: polls for the master's exit for at most
# timeout => 60 seconds. Returns 1 when it exited (its workers with it), 0 when it is still
# running (then finish/stop escalates as usual).
sub quit {
    my ($self, %opt) = @_;
    my $pid = $self->{pid} or return 1;
    kill 'QUIT', $pid or die "kill QUIT: $!\n";
    my $deadline = time + ($opt{timeout} // 60);
    while (time < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) {
            $self->{exit_status} = $?;
            delete $self->{pid};
            return 1;
        }
        sleep 0.01;
    }
    return 0;
}

# Graceful stop (SIGQUIT) and wait for the master to exit; escalates after a deadline.
sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return $self;
    return $self if $$ != $self->{owner};
    my @children = $self->_workers(0);
    kill 'QUIT', $pid;
    for my $sig ('TERM', 'KILL') {
        my $deadline = time + ($sig eq 'TERM' ? 15 : 5);
        while (time < $deadline) {
            if (waitpid($pid, WNOHANG) == $pid) {
                $self->{exit_status} = $?;
                delete $self->{pid};
                return $self;
            }
            sleep 0.01;
        }
        Test::More::diag("nginx $pid did not exit, sending SIG$sig");
        kill $sig, $pid;
        kill 'KILL', @children if $sig eq 'KILL' && @children;
    }
    waitpid $pid, 0;
    delete $self->{pid};
    return $self;
}

# Process ids of the running worker processes.
sub worker_pids { $_[0]->_workers(1) }

# Live (not zombie) child processes of the master; with $workers_only, worker processes only.
sub _workers {
    my ($self, $workers_only) = @_;
    $workers_only //= 1;
    my $master = $self->{pid} or return;
    my @pids;
    opendir my $dh, '/proc' or return;
    for my $p (readdir $dh) {
        next unless $p =~ /^\d+$/;
        open my $fh, '<', "/proc/$p/stat" or next;
        my $stat = <$fh> // next;
        close $fh;
        my ($state, $ppid) = $stat =~ /\)\s+(\S)\s+(\d+)/ or next;
        next unless $ppid == $master && $state ne 'Z' && $state ne 'X';
        if ($workers_only) {
            open my $ch, '<', "/proc/$p/cmdline" or next;
            my $cmd = <$ch> // '';
            next unless $cmd =~ /worker process/;
        }
        push @pids, $p;
    }
    return @pids;
}

# Stops nginx and checks the error log (one test). Call this (or done) in every test.
sub finish {
    my ($self) = @_;
    return $self if $self->{finished}++;
    $self->stop;

    my $log = $self->read_file('error.log');
    my $stderr = $self->read_file('stderr.log');
    my @bad = $self->unexpected_log_lines($log . "\n" . $stderr);
    push @bad, "nginx master exit status $self->{exit_status}" if $self->{exit_status};
    Test::More::ok(!@bad, 'no unexpected alert/crit/emerg or sanitizer report in error.log')
        or Test::More::diag(join "\n", 'unexpected:', @bad[0 .. ($#bad < 19 ? $#bad : 19)]);

    if ($ENV{TEST_NGINX_CATLOG}) {
        Test::More::diag("---- $self->{dir}/error.log ----\n$log");
        Test::More::diag("---- stderr ----\n$stderr") if length $stderr;
    }
    Test::More::diag("test directory kept: $self->{dir}") if $ENV{TEST_NGINX_LEAVE};
    return $self;
}

# Lines of $text that teardown reports: [alert]/[crit]/[emerg] and sanitizer output, less
# those the test declared with allow() or expect_log_level().
sub unexpected_log_lines {
    my ($self, $text) = @_;
    my @bad;
    for my $line (split /\n/, $text) {
        next unless grep { $line =~ $_ } @BAD_LOG;
        next if $line =~ /\[(alert|crit|emerg)\]/ && $self->{allow_level}{$1}
            && $line !~ /Sanitizer|runtime error:/;
        next if grep { $line =~ $_ } @{ $self->{allow} };
        push @bad, $line;
    }
    return @bad;
}

# finish, then done_testing (unless the test declared a plan).
sub done {
    my ($self) = @_;
    $self->finish;
    Test::More::done_testing() unless Test::More->builder->has_plan;
    return;
}

sub DESTROY {
    my ($self) = @_;
    return if $$ != ($self->{owner} // 0);
    local ($?, $!, $@);
    if ($self->{pid}) {
        $self->stop;
        Test::More::diag("Throttle::Test: nginx stopped in DESTROY; call \$t->done")
            unless $self->{finished};
    }
    Test::More::diag("---- $self->{dir}/error.log ----\n" . $self->read_file('error.log'))
        if $ENV{TEST_NGINX_CATLOG} && !$self->{finished} && $self->{dir};
}

# ---------------------------------------------------------------------------------------
# error log

sub error_log { $_[0]->read_file('error.log') }

# Byte offset of the end of the error log; pass it to log_since / log_lines.
sub log_mark { -s $_[0]->error_log_path // 0 }

sub log_since {
    my ($self, $mark) = @_;
    my $s = $self->error_log;
    return substr($s, $mark // 0);
}

# Lines of the error log (after $mark) matching $re.
sub log_lines {
    my ($self, $re, $mark) = @_;
    return grep { $_ =~ $re } split /\n/, $self->log_since($mark);
}

sub log_like {
    my ($self, $re, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    return Test::More::like($self->error_log, $re, $name // "error log matches $re");
}

sub log_unlike {
    my ($self, $re, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    return Test::More::unlike($self->error_log, $re, $name // "error log does not match $re");
}

# ---------------------------------------------------------------------------------------
# HTTP

sub _headers_list {
    my ($h) = @_;
    return () unless $h;
    return @$h if ref $h eq 'ARRAY';
    return map { ($_, $h->{$_}) } sort keys %$h;
}

sub _build_request {
    my ($method, $path, $headers, $body) = @_;
    my @h = _headers_list($headers);
    my %have;
    for (my $i = 0; $i < @h; $i += 2) { $have{ lc $h[$i] } = 1 }
    my $req = "$method $path HTTP/1.1\r\n";
    $req .= "Host: localhost\r\n"   unless $have{host};
    $req .= "Connection: close\r\n" unless $have{connection};
    $req .= 'Content-Length: ' . length($body) . "\r\n"
        if defined $body && !$have{'content-length'} && !$have{'transfer-encoding'};
    for (my $i = 0; $i < @h; $i += 2) { $req .= "$h[$i]: $h[$i + 1]\r\n" }
    return $req . "\r\n" . ($body // '');
}

# Parses a complete response (connection closed by the server).
sub parse_response {
    my ($raw, $head) = @_;
    my $r = { raw => $raw, status => 0, headers => {}, header_list => [], body => '' };
    my $end = index $raw, "\r\n\r\n";
    if ($end < 0) {
        $r->{error} = length $raw ? 'incomplete response header' : 'empty response';
        return $r;
    }
    my ($status_line, @lines) = split /\r\n/, substr($raw, 0, $end);
    if ($status_line !~ m{^HTTP/\d\.\d (\d{3})}) {
        $r->{error} = "bad status line: $status_line";
        return $r;
    }
    $r->{status} = $1;
    for (@lines) {
        my ($n, $v) = /^([^:]+):\s*(.*?)\s*$/ or next;
        push @{ $r->{header_list} }, [$n, $v];
        my $k = lc $n;
        $r->{headers}{$k} = exists $r->{headers}{$k} ? "$r->{headers}{$k}, $v" : $v;
    }
    my $body = substr $raw, $end + 4;
    if ($head) {
        # a response to HEAD has no body whatever its Content-Length says
    } elsif (($r->{headers}{'transfer-encoding'} // '') =~ /chunked/i) {
        my $out = '';
        while ($body =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
            my $len = hex $1;
            last if $len == 0;
            $out .= substr $body, 0, $len, '';
            $body =~ s/^\r\n//;
        }
        $body = $out;
    } elsif (defined $r->{headers}{'content-length'}) {
        $r->{error} = 'short body' if length($body) < $r->{headers}{'content-length'};
        $body = substr $body, 0, $r->{headers}{'content-length'};
    }
    $r->{body} = $body;
    return $r;
}

# One request on its own connection. Options: port => (default PORT), timeout => 10,
# raw => a full request string instead of method/path/headers/body.
# Returns { status, headers => { lowercased => value (repeated ones joined by ", ") },
# header_list => [[Name, value], ...], body, raw } (status 0 and error on failure).
sub request {
    my ($self, $method, $path, $headers, $body, %opt) = @_;
    my $req = $opt{raw} // _build_request($method, $path, $headers, $body);
    my ($r) = $self->_exchange([$req], $opt{port}, $opt{timeout} // 10);
    return $r;
}

sub get {
    my ($self, $path, @headers) = @_;
    return $self->request('GET', $path, \@headers);
}

# Opens $n connections at once (non-blocking), sends every request, then reads every
# response. $make->($i) returns [$method, $path, \%headers or \@pairs, $body] for
# request $i (0-based); it may add `port => $p` after the body to send that request to
# another port (e.g. a second instance). Options: timeout => 60 (overall deadline), port =>.
# Returns the responses in request order; each has `elapsed`, seconds from connect to close.
sub concurrent {
    my ($self, $n, $make, %opt) = @_;
    my $limit = _nofile_limit();
    die "concurrent($n): RLIMIT_NOFILE is $limit, too low; raise it with ulimit -n "
        . "(or call need_fds($n) to skip)\n"
        if defined $limit && $limit < $n + 64;
    my (@reqs, @ports);
    for my $i (0 .. $n - 1) {
        my ($method, $path, $headers, $body, %ropt) = @{ $make->($i) };
        push @reqs, _build_request($method, $path, $headers, $body);
        push @ports, $ropt{port} // $opt{port};
    }
    return $self->_exchange(\@reqs, \@ports, $opt{timeout} // 60);
}

# $port: one port for every request, or an array of ports (one per request, undef: PORT).
sub _exchange {
    my ($self, $reqs, $port, $timeout) = @_;
    my @port = ref $port eq 'ARRAY' ? @$port : ($port) x @$reqs;
    my $deadline = time + $timeout;
    my (@c, %by_fd);
    my $rsel = IO::Select->new;
    my $wsel = IO::Select->new;

    for my $i (0 .. $#$reqs) {
        my $c = { i => $i, out => $reqs->[$i], in => '', t0 => time };
        push @c, $c;
        my $addr = sockaddr_in($port[$i] // $self->port(1), inet_aton('127.0.0.1'));
        my $fh;
        unless (socket $fh, PF_INET, SOCK_STREAM, 0) {
            $c->{error} = "socket: $!";
            next;
        }
        $fh->blocking(0);
        if (!connect($fh, $addr) && $! != EINPROGRESS && $! != EALREADY) {
            $c->{error} = "connect: $!";
            close $fh;
            next;
        }
        $c->{fh} = $fh;
        $by_fd{ fileno $fh } = $c;
        $wsel->add($fh);
    }

    while ($rsel->count || $wsel->count) {
        my $left = $deadline - time;
        last if $left <= 0;
        my ($r, $w) = IO::Select->select($rsel, $wsel, undef, $left > 1 ? 1 : $left);
        for my $fh (@{ $w || [] }) {
            my $c = $by_fd{ fileno $fh };
            unless ($c->{connected}) {
                my $err = unpack 'i', getsockopt($fh, SOL_SOCKET, SO_ERROR) // pack('i', 0);
                if ($err) {
                    $c->{error} = 'connect: ' . ($! = $err);
                    $wsel->remove($fh);
                    close $fh;
                    next;
                }
                $c->{connected} = 1;
            }
            my $n = syswrite $fh, $c->{out};
            if (!defined $n) {
                next if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
                $c->{error} = "write: $!";
                $wsel->remove($fh);
                close $fh;
                next;
            }
            substr $c->{out}, 0, $n, '';
            if ($c->{out} eq '') {
                $wsel->remove($fh);
                $rsel->add($fh);
            }
        }
        for my $fh (@{ $r || [] }) {
            my $c = $by_fd{ fileno $fh };
            my $n = sysread $fh, $c->{in}, 65536, length $c->{in};
            if (!defined $n) {
                next if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
                $c->{error} = "read: $!" unless length $c->{in};
                $c->{done} = 1;
            } elsif ($n == 0) {
                $c->{done} = 1;
            }
            if ($c->{done}) {
                $c->{t1} = time;
                $rsel->remove($fh);
                close $fh;
            }
        }
    }

    my @out;
    for my $c (@c) {
        if ($c->{fh} && !$c->{done} && !$c->{error}) {
            $c->{error} = 'timeout';
            close $c->{fh};
        }
        my $resp = parse_response($c->{in}, $reqs->[$c->{i}] =~ /^HEAD /);
        $resp->{error} = $c->{error} if $c->{error};
        $resp->{status} = 0 if $c->{error};
        $resp->{elapsed} = ($c->{t1} // time) - $c->{t0};
        push @out, $resp;
    }
    return @out;
}

# { status => count } for a list of responses.
sub tally {
    my ($self, @r) = @_;
    my %n;
    $n{ $_->{status} }++ for @r;
    return \%n;
}

sub _nofile_limit {
    open my $fh, '<', '/proc/self/limits' or return undef;
    while (<$fh>) {
        next unless /^Max open files\s+(\S+)/;
        my $v = $1;
        return $v =~ /^\d+$/ ? $v : undef;
    }
    return undef;
}

1;
