package Throttle::Django;

# The Django + Django REST Framework test application (t/django/) under gunicorn, for the
# integration tests (core Perl only; Debian's python3-django, python3-djangorestframework and
# gunicorn):
#
#   my $t  = Throttle::Test->new;
#   my $dj = Throttle::Django->new(t => $t)->start;   # registered as $t->app if it has none
#   $t->write_conf($dj->fill(<<'EOF'))->run;
#   http {
#       server {
#           listen 127.0.0.1:%%PORT%%;
#           location / { proxy_pass http://%%DJANGO%%; }
#       }
#   }
#   EOF
#   my $cookie = $dj->login('alice');                   # "sessionid=..."
#   my $r = $t->get('/plain/review/today/', Cookie => $cookie);
#
# new() skips the whole test file (plan skip_all) when Django, DRF or gunicorn is missing, so
# make it before the first test. start() migrates a fresh SQLite database in the object's
# directory (under the test's temp dir), creates the users, starts gunicorn in its own
# process group on a listening socket this process made (a free loopback port, handed to
# gunicorn as fd://N: no race for the port) and waits until a worker answers. stop() (also
# at DESTROY and END) leaves no process behind. See t/README.md, "Django application".

use strict;
use warnings;

use Cwd ();
use Errno qw(EINTR);
use Fcntl qw(F_SETFD);
use File::Basename ();
use File::Path ();
use File::Spec;
use File::Temp ();
use IO::Select;
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Scalar::Util ();
use Test::More ();
use Time::HiRes qw(time sleep);

require Throttle::Test;    # _build_request, parse_response, %SEEN_PORT

my $REPO = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/../../..');
my %LIVE;    # "pid" => weakened object, for END
my $SEQ = 0;

our $PYTHON = $ENV{TEST_DJANGO_PYTHON} // '/usr/bin/python3';

our %DEFAULT_USERS = (alice => 'alice-pw', bob => 'bob-pw', carol => 'carol-pw');
our %DEFAULT_RATES = (anon => '5/min', user => '10/min', login => '3/min');

# Why the application cannot run here (a string), or undef when it can.
sub unavailable {
    return "no python at $PYTHON (set TEST_DJANGO_PYTHON)" unless -x $PYTHON;
    my $out = `$PYTHON -c 'import django, rest_framework, gunicorn; print(django.VERSION[0], django.VERSION[1])' 2>&1`;
    return "Django, Django REST Framework or gunicorn is not installed for $PYTHON (Debian: "
        . "apt-get install python3-django python3-djangorestframework gunicorn): "
        . (split /\n/, $out)[-1]
        if $? != 0;
    my ($maj, $min) = $out =~ /(\d+) (\d+)/;
    return "Django $maj.$min is too old (3.2 or later)" if !$maj || $maj * 100 + $min < 302;
    return undef;
}

# Options: t => Throttle::Test (directory under its temp dir; registered as its app, for
# %%APP_PORT%%, unless it has one), dir => directory, workers => 1 (gunicorn sync workers; DRF's
# counts live in Django's file cache, shared by all of them), users => { name => password }
# (default alice, bob, carol with password "<name>-pw"), rates => { anon, user, login } (DRF's
# rates, default 5/min, 10/min, 3/min), secret => SECRET_KEY.
# Skips the test file when the application cannot run. Does not start it: call start.
sub new {
    my ($class, %opt) = @_;
    if (my $why = unavailable()) {
        Test::More::plan(skip_all => $why);
    }
    my $self = bless {
        workers => $opt{workers} // 1,
        users   => $opt{users} // {%DEFAULT_USERS},
        rates   => { %DEFAULT_RATES, %{ $opt{rates} // {} } },
        secret  => $opt{secret} // 'test-secret-' . join('', map { int rand 10 } 1 .. 32),
        owner   => $$,
        ids     => {},
    }, $class;
    my $n = ++$SEQ;
    if ($opt{dir}) {
        $self->{dir} = $opt{dir};
    } elsif ($opt{t}) {
        $self->{dir} = $opt{t}->testdir . "/django-$n";
    } else {
        my $base = $ENV{TEST_NGINX_TMPDIR} // File::Spec->tmpdir;
        $self->{tmp} = File::Temp->newdir('throttle-django-XXXXXX', DIR => $base,
            CLEANUP => !$ENV{TEST_NGINX_LEAVE});
        $self->{dir} = "$self->{tmp}";
    }
    File::Path::make_path($self->{dir});
    $opt{t}->app($self) if $opt{t} && !$opt{t}->app;
    return $self;
}

sub port     { $_[0]{port} }
sub address  { "127.0.0.1:$_[0]{port}" }
sub pid      { $_[0]{pid} }
sub dir      { $_[0]{dir} }
sub running  { defined $_[0]{pid} }
sub log      { _slurp("$_[0]{dir}/gunicorn.log") }    # gunicorn's and Django's stderr
sub users    { sort keys %{ $_[0]{users} } }
sub password { $_[0]{users}{ $_[1] } }
sub user_id  { $_[0]{ids}{ $_[1] } }                   # the user's pk (after start)
sub rate     { $_[0]{rates}{ $_[1] } }                 # DRF's rate, e.g. "5/min"

# Replaces %%DJANGO%% (127.0.0.1:PORT) and %%DJANGO_PORT%% in a text.
sub fill {
    my ($self, $text) = @_;
    my ($addr, $port) = ($self->address, $self->{port});
    $text =~ s/%%DJANGO%%/$addr/g;
    $text =~ s/%%DJANGO_PORT%%/$port/g;
    return $text;
}

sub _env {
    my ($self) = @_;
    return (
        THROTTLE_DJANGO_DIR        => $self->{dir},
        THROTTLE_DJANGO_SECRET     => $self->{secret},
        THROTTLE_DJANGO_USERS      => join(',', map { "$_:$self->{users}{$_}" } $self->users),
        THROTTLE_DJANGO_RATE_ANON  => $self->{rates}{anon},
        THROTTLE_DJANGO_RATE_USER  => $self->{rates}{user},
        THROTTLE_DJANGO_RATE_LOGIN => $self->{rates}{login},
        DJANGO_SETTINGS_MODULE     => 'throttleapp.settings',
        PYTHONPATH                 => "$REPO/t/django",
        PYTHONDONTWRITEBYTECODE    => 1,
        PYTHONUNBUFFERED           => 1,
    );
}

# Migrates the database and creates the users (harness_setup); fills user_id.
sub _setup {
    my ($self) = @_;
    my $dir = $self->{dir};
    my $pid = open(my $out, '-|') // die "fork: $!\n";
    if ($pid == 0) {
        %ENV = (%ENV, $self->_env);
        delete @ENV{qw(PYTHONHOME PYTHONSTARTUP)};
        open STDERR, '>>', "$dir/setup.log" or POSIX::_exit(126);
        exec { $PYTHON } $PYTHON, "$REPO/t/django/manage.py", 'harness_setup'
            or POSIX::_exit(127);
    }
    my $text = do { local $/; <$out> } // '';
    close $out;
    die "Throttle::Django: harness_setup failed ($?):\n" . _slurp("$dir/setup.log") if $?;
    for (split /\n/, $text) {
        $self->{ids}{$1} = $2 if /^(\S+) (\d+)$/;
    }
    return;
}

sub _listen {
    my ($self) = @_;
    my %sock = (LocalAddr => '127.0.0.1', Proto => 'tcp', Listen => 1024, ReuseAddr => 1);
    if ($self->{port}) {
        return IO::Socket::INET->new(%sock, LocalPort => $self->{port})
            // die "Throttle::Django: listen on 127.0.0.1:$self->{port}: $!\n";
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
    die "Throttle::Django: no free port found\n";
}

# Sets up the database (first start only), starts gunicorn and waits (up to 60 s, failing
# early if gunicorn exits) until a worker answers; returns $self. A no-op when it runs.
sub start {
    my ($self) = @_;
    return $self if $self->{pid};
    die "Throttle::Django: start in a forked child\n" if $$ != $self->{owner};
    my $dir = $self->{dir};
    $self->_setup unless $self->{set_up}++;
    my $listen = $self->_listen;
    my @cmd = ($PYTHON, '-m', 'gunicorn',
        '--bind', 'fd://' . fileno($listen),
        '--workers', $self->{workers}, '--worker-class', 'sync',
        '--timeout', 60, '--graceful-timeout', 5,
        '--access-logfile', "$dir/access.log",
        '--access-logformat', '%(s)s %(m)s %(U)s %(q)s %(h)s',
        '--chdir', "$REPO/t/django", 'throttleapp.wsgi');

    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        setpgrp(0, 0);
        %ENV = (%ENV, $self->_env);
        delete @ENV{qw(PYTHONHOME PYTHONSTARTUP)};
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$dir/gunicorn.log" or POSIX::_exit(126);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
        fcntl($listen, F_SETFD, 0);    # keep it across exec
        exec { $PYTHON } @cmd or POSIX::_exit(127);
    }
    eval { setpgrp($pid, $pid) };
    close $listen;    # gunicorn has its own copy: connections queue until a worker accepts
    $self->{pid} = $self->{pgid} = $pid;
    $LIVE{$pid} = $self;
    Scalar::Util::weaken($LIVE{$pid});

    # One request on the already listening socket: the kernel queues it, the first worker
    # answers it. Polled in short slices so that a gunicorn that dies is noticed at once.
    my $deadline = time + 60;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $self->{port},
        Proto => 'tcp') or do { $self->stop; die "Throttle::Django: connect: $!\n" };
    syswrite $s, Throttle::Test::_build_request('GET', '/_identity/', [], undef);
    my ($raw, $sel) = ('', IO::Select->new($s));
    while (1) {
        if (waitpid($pid, WNOHANG) == $pid) {
            CORE::kill 'KILL', -$self->{pgid};
            delete $self->{pid};
            delete $LIVE{$pid};
            die "Throttle::Django: gunicorn exited ($?) while starting:\n" . $self->log;
        }
        if (time > $deadline) {
            $self->stop;
            die "Throttle::Django: no answer within 60 s:\n" . $self->log;
        }
        next unless $sel->can_read(0.1);
        my $n = sysread $s, $raw, 65536, length $raw;
        next if !defined $n && $! == EINTR;
        last unless $n;
    }
    close $s;
    my $r = Throttle::Test::parse_response($raw);
    if ($r->{status} != 401) {
        # An empty answer: gunicorn closed the socket as it exited (a worker failed to boot).
        my $until = time + 5;
        my $exited = 0;
        while (!$exited && time < $until) {
            $exited = waitpid($pid, WNOHANG) == $pid;
            sleep 0.01 unless $exited;
        }
        if ($exited) {
            CORE::kill 'KILL', -$self->{pgid};    # a worker the master left, if any
            delete $self->{pid};
            delete $LIVE{$pid};
        } else {
            $self->stop;
        }
        die "Throttle::Django: " . ($exited ? "gunicorn exited ($?) while starting"
                : "/_identity/ answered $r->{status} at start:\n$raw") . "\n" . $self->log;
    }
    $self->reset;
    return $self;
}

# Stops gunicorn (SIGTERM: graceful, idle workers exit at once; SIGKILL to the whole
# process group after 10 s) and reaps it; no process of the group is left.
sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return $self;
    return $self if $$ != $self->{owner};
    my $pg = $self->{pgid};
    CORE::kill 'CONT', -$pg;
    CORE::kill 'TERM', $pid;
    my $deadline = time + 10;
    my $reaped = 0;
    while (time < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) { $reaped = 1; last }
        sleep 0.01;
    }
    CORE::kill 'KILL', -$pg;
    waitpid $pid, 0 unless $reaped;
    $deadline = time + 5;
    sleep 0.01 while $self->processes && time < $deadline;
    delete $LIVE{$pid};
    delete $self->{pid};
    return $self;
}

sub restart { $_[0]->stop->start }

# Pids in gunicorn's process group (master and workers); empty after stop.
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
    for my $dj (grep { defined } values %LIVE) {
        local $?;
        $dj->stop;
    }
}

# ---------------------------------------------------------------------------------------
# what reached the application (gunicorn's access log)

# Requests answered since the last reset, in order: { status, method, path, query, remote }.
# With a filter: undef (all), a string (path equals it), qr/.../ (matched against the path),
# a code ref (called with the request). gunicorn logs a request after answering it: a test
# that counts right after a response may use wait_for_count.
sub requests {
    my ($self, $filter) = @_;
    my @all;
    for (split /\n/, _slurp("$self->{dir}/access.log")) {
        my ($status, $method, $path, $query, $remote) = split / /, $_, 5;
        next unless defined $remote;
        $query = '' if $query eq '-';
        push @all, { status => $status, method => $method, path => $path, query => $query,
            remote => $remote };
    }
    return @all unless defined $filter;
    return grep {
        ref $filter eq 'CODE' ? $filter->($_)
            : ref $filter eq 'Regexp' ? $_->{path} =~ $filter
            : $_->{path} eq $filter
    } @all;
}

sub count {
    my ($self, $filter) = @_;
    my @r = $self->requests($filter);
    return scalar @r;
}

# Polls until count($filter) >= $n; returns the count reached. Options: timeout => 10.
sub wait_for_count {
    my ($self, $n, $filter, %opt) = @_;
    my $deadline = time + ($opt{timeout} // 10);
    while (1) {
        my $c = $self->count($filter);
        return $c if $c >= $n || time > $deadline;
        sleep 0.01;
    }
}

# Forgets the logged requests (gunicorn appends to the truncated file).
sub reset {
    my ($self) = @_;
    open my $fh, '>', "$self->{dir}/access.log" or die "$self->{dir}/access.log: $!\n";
    close $fh;
    return $self;
}

# ---------------------------------------------------------------------------------------
# clients

# One HTTP/1.1 request on its own connection (Connection: close) to 127.0.0.1:$port, from
# the local address `from` (default 127.0.0.1; any 127.x.y.z works on Linux: distinct
# anonymous clients). Returns what Throttle::Test::request returns ({ status, headers,
# header_list, body, raw, error }). Options: from =>, timeout => 10.
sub http {
    my ($port, $method, $path, $headers, $body, %opt) = @_;
    my $req = Throttle::Test::_build_request($method, $path, $headers, $body);
    my $timeout = $opt{timeout} // 10;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
        LocalAddr => $opt{from} // '127.0.0.1', Timeout => $timeout)
        or return { status => 0, error => "connect: $!", headers => {}, body => '' };
    my $off = 0;
    while ($off < length $req) {
        my $n = syswrite $s, $req, length($req) - $off, $off;
        next if !defined $n && $! == EINTR;
        last unless $n;
        $off += $n;
    }
    my ($raw, $sel, $deadline) = ('', IO::Select->new($s), time + $timeout);
    my $done = 0;
    while (1) {
        my $left = $deadline - time;
        last if $left <= 0 || !$sel->can_read($left);
        my $n = sysread $s, $raw, 65536, length $raw;
        next if !defined $n && $! == EINTR;
        unless ($n) { $done = 1; last }
    }
    close $s;
    my $r = Throttle::Test::parse_response($raw, $method eq 'HEAD');
    unless ($done) { $r->{error} = 'timeout'; $r->{status} = 0 }
    return $r;
}

# A request straight to gunicorn (options as http: from =>, timeout =>; port => another).
sub request {
    my ($self, $method, $path, $headers, $body, %opt) = @_;
    return http(delete $opt{port} // $self->{port}, $method, $path, $headers, $body, %opt);
}

sub get {
    my ($self, $path, @headers) = @_;
    return $self->request('GET', $path, \@headers);
}

# Logs the user in (POST /api/auth/login/ straight to gunicorn, a form body) and returns the
# new session's cookie, "sessionid=...", for a Cookie header. Every call makes a new session.
# Options: password => (default the user's), from =>, port => (log in through nginx).
# Dies when the login fails.
sub login {
    my ($self, $user, %opt) = @_;
    my $pw = $opt{password} // $self->{users}{$user} // die "Throttle::Django: no user $user\n";
    my $body = 'username=' . _urlenc($user) . '&password=' . _urlenc($pw);
    my $r = $self->request('POST', '/api/auth/login/',
        ['Content-Type' => 'application/x-www-form-urlencoded'], $body,
        map { exists $opt{$_} ? ($_ => $opt{$_}) : () } qw(from port));
    my ($cookie) = map { $_->[1] =~ /^(sessionid=[^;]+)/ ? $1 : () }
        grep { lc $_->[0] eq 'set-cookie' } @{ $r->{header_list} // [] };
    die "Throttle::Django: login as $user failed: $r->{status}\n$r->{raw}\n"
        unless $r->{status} == 200 && $cookie;
    return $cookie;
}

# Ends the session (POST /api/auth/logout/); returns the response.
sub logout {
    my ($self, $cookie, %opt) = @_;
    return $self->request('POST', '/api/auth/logout/', [Cookie => $cookie], '', %opt);
}

# The session key of a cookie string ("sessionid=KEY" -> KEY).
sub session_key {
    my ($cookie) = @_;
    return $cookie =~ /sessionid=([^;\s]+)/ ? $1 : undef;
}

sub _urlenc {
    my ($s) = @_;
    $s =~ s/([^A-Za-z0-9\-._~])/sprintf('%%%02X', ord $1)/ge;
    return $s;
}

sub _slurp {
    my ($path) = @_;
    open my $fh, '<', $path or return '';
    local $/;
    return <$fh> // '';
}

1;
