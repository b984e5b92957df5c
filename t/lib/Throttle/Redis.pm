package Throttle::Redis;

# A real redis-server for the integration tests (core Perl only).
#
#   my $t = Throttle::Test->new;
#   my $redis = Throttle::Redis->new(t => $t);          # started, PING answered
#   $t->write_conf($redis->fill(<<'EOF'))->run;
#   http {
#       throttle_redis %%REDIS%% timeout=50ms;          # 127.0.0.1:PORT
#       ...
#   }
#   EOF
#   is($redis->get(Throttle::Redis::zone_base('z', 'k') . ':...'), 100);
#   $redis->pause; ... $redis->resume;                  # SIGSTOP / SIGCONT
#   $redis->kill;  ... $redis->restart;                 # same port, empty
#
# The server listens on a free loopback port (and, with unixsocket => 1, on a socket in its
# directory), persists nothing (--save '' --appendonly no) and runs in its own directory
# (under the Throttle::Test's temp directory when given t =>). It is stopped when the object
# goes away and, whatever happens to the test, at END.
#
# Zone keys reach Redis as their keyed digest (src/core/zone_key.hpp): zone_base($zone, $key)
# gives the name a key has under the tests' usual secret (TEST_SECRET), or under secret =>.
#
# Several Throttle::Test objects may run at once in one test (each has its own temp directory,
# pid file and ports): two nginx instances sharing one Redis are two Throttle::Test objects
# whose configurations both say `throttle_redis %%REDIS%%`.

use strict;
use warnings;

use File::Path ();
use File::Spec;
use File::Temp ();
use IO::Select;
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Scalar::Util ();
use Test::More ();
use Digest::SHA ();
use Time::HiRes qw(time sleep);

# The throttle_secret most test configurations set.
use constant TEST_SECRET => 'test-secret-0123456789abcdef';

# The 32 hex digits a zone stores and sends for a key: the first 16 bytes of
# HMAC-SHA256(HMAC-SHA256(secret, "throttle-zone-key\0" . zone), key).
sub zone_digest {
    my ($zone, $key, %opt) = @_;
    my $zone_key = Digest::SHA::hmac_sha256("throttle-zone-key\0$zone", $opt{secret} // TEST_SECRET);
    return substr(Digest::SHA::hmac_sha256_hex($key, $zone_key), 0, 32);
}

# PREFIX{ZONE:DIGEST}: the base of a key's Redis names (prefix => 'throttle:' by default).
sub zone_base {
    my ($zone, $key, %opt) = @_;
    return ($opt{prefix} // 'throttle:') . '{' . $zone . ':' . zone_digest($zone, $key, %opt) . '}';
}

my %LIVE;    # "pid" => weakened object, for END
my $SEQ = 0;

# Options: t => Throttle::Test (directory under its temp dir), dir => directory,
# password => 'secret' (--requirepass), users => ['alice on >pw ~* &* +@all', ...] (ACL
# users), unixsocket => 1, args => [extra redis-server arguments], start => 0 (do not start),
# replicaof => Throttle::Redis (a replica of that server), cluster => 1 (a Redis Cluster node,
# --cluster-enabled: no slots assigned, it answers in cluster mode; its port + 10000, the
# cluster bus, is free too), sentinel => Throttle::Redis (a Sentinel monitoring that server as
# "mymaster": redis-server CONF --sentinel, the config written to its directory; quorum => N,
# default 1; sentinel_conf => [more lines of sentinel.conf]), tls => 1 (also a TLS port,
# tls_port, with certificates made by `openssl` in tls_dir: ca.crt/ca.key, server.crt/key for
# IP:127.0.0.1 and DNS:localhost, client.crt/key, and other.crt, a CA that signed none of
# them; tls_auth_clients => 1 requires a client certificate; the plaintext port stays, for the
# test's own redis-cli); tls_certs => DIR uses the certificates already made there.
# Skips the test file when redis-server or redis-cli is missing.
sub new {
    my ($class, %opt) = @_;
    my $server = $ENV{TEST_REDIS_SERVER} // '/usr/bin/redis-server';
    my $cli    = $ENV{TEST_REDIS_CLI}    // '/usr/bin/redis-cli';
    Test::More::plan(skip_all => "no redis-server at $server (apt-get install redis-server)")
        unless -x $server;
    Test::More::plan(skip_all => "no redis-cli at $cli") unless -x $cli;

    my $self = bless {
        server   => $server,
        cli_path => $cli,
        password => $opt{password},
        users    => $opt{users} // [],
        args     => [@{ $opt{args} // [] }],
        owner    => $$,
        starts   => 0,
    }, $class;

    my $n = ++$SEQ;
    if ($opt{dir}) {
        $self->{dir} = $opt{dir};
    } elsif ($opt{t}) {
        $self->{dir} = $opt{t}->testdir . "/redis-$n";
    } else {
        my $base = $ENV{TEST_NGINX_TMPDIR} // File::Spec->tmpdir;
        $self->{tmp} = File::Temp->newdir('throttle-redis-XXXXXX', DIR => $base,
            CLEANUP => !$ENV{TEST_NGINX_LEAVE});
        $self->{dir} = "$self->{tmp}";
    }
    File::Path::make_path($self->{dir});
    $self->{socket} = "$self->{dir}/redis.sock" if $opt{unixsocket};
    $self->{port} = $opt{port} // (
          $opt{cluster} ? Throttle::Redis::_free_cluster_port()
        : $opt{t}       ? $opt{t}->port("redis$n")
        :                 Throttle::Redis::_free_port());
    push @{ $self->{args} }, '--replicaof', '127.0.0.1', $opt{replicaof}->port if $opt{replicaof};
    push @{ $self->{args} }, '--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf'
        if $opt{cluster};
    if ($opt{tls}) {
        Test::More::plan(skip_all => 'no openssl command') if system('command -v openssl >/dev/null 2>&1');
        my $dir = $opt{tls_certs} // "$self->{dir}/tls";
        Throttle::Redis::_make_certs($dir) unless $opt{tls_certs};
        $self->{tls_dir} = $dir;
        $self->{tls_port} = $opt{tls_port} // ($opt{t} ? $opt{t}->port("redis${n}tls")
                                                      : Throttle::Redis::_free_port());
        push @{ $self->{args} }, '--tls-port', $self->{tls_port},
            '--tls-cert-file', "$dir/server.crt", '--tls-key-file', "$dir/server.key",
            '--tls-ca-cert-file', "$dir/ca.crt",
            '--tls-auth-clients', ($opt{tls_auth_clients} ? 'yes' : 'no');
        # A TLS cluster node: the bus is TLS too, on port + 10000 (by default Redis puts it
        # at tls_port + 10000 then), and it always asks the peer for a client certificate.
        push @{ $self->{args} }, '--tls-cluster', 'yes', '--tls-replication', 'yes',
            '--cluster-port', $self->{port} + 10000,
            '--tls-client-cert-file', "$dir/client.crt", '--tls-client-key-file', "$dir/client.key"
            if $opt{cluster};
    }
    if ($opt{sentinel}) {
        my $conf = "$self->{dir}/sentinel.conf";
        open my $fh, '>', $conf or die "$conf: $!\n";
        print $fh "sentinel monitor mymaster 127.0.0.1 " . $opt{sentinel}->port . " "
            . ($opt{quorum} // 1) . "\n";
        print $fh "$_\n" for @{ $opt{sentinel_conf} // [] };
        close $fh;
        $self->{sentinel_conf} = $conf;
    }

    $self->start unless defined $opt{start} && !$opt{start};
    return $self;
}

sub port     { $_[0]{port} }
sub pid      { $_[0]{pid} }
sub dir      { $_[0]{dir} }
sub socket   { $_[0]{socket} }
sub address  { "127.0.0.1:$_[0]{port}" }
sub tls_port { $_[0]{tls_port} }
sub tls_dir  { $_[0]{tls_dir} }
sub running  { defined $_[0]{pid} }
sub log_path { "$_[0]{dir}/redis.log" }

# Replaces %%REDIS%% (127.0.0.1:PORT), %%REDIS_PORT%% and %%REDIS_SOCKET%% in a config, and
# with tls => 1 %%REDIS_TLS%% (127.0.0.1:TLS_PORT) and %%REDIS_TLS_DIR%% (the certificates).
sub fill {
    my ($self, $text) = @_;
    my $addr = $self->address;
    if ($self->{tls_port}) {
        $text =~ s/%%REDIS_TLS%%/127.0.0.1:$self->{tls_port}/g;
        $text =~ s/%%REDIS_TLS_DIR%%/$self->{tls_dir}/g;
    }
    $text =~ s/%%REDIS%%/$addr/g;
    $text =~ s/%%REDIS_PORT%%/$self->{port}/g;
    $text =~ s/%%REDIS_SOCKET%%/$self->{socket} \/\/ die "no unixsocket\n"/ge;
    return $text;
}

# A CA, a server certificate (IP:127.0.0.1, DNS:localhost), a client certificate, and another
# CA, in $dir (P-256 keys: quick to make).
sub _make_certs {
    my ($dir) = @_;
    File::Path::make_path($dir);
    my $key = '-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes';
    open my $fh, '>', "$dir/server.ext" or die "$dir/server.ext: $!\n";
    print $fh "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n";
    close $fh;
    open $fh, '>', "$dir/client.ext" or die "$dir/client.ext: $!\n";
    print $fh "extendedKeyUsage=clientAuth\n";
    close $fh;
    for my $cmd (
        "openssl req -x509 $key -keyout ca.key -out ca.crt -days 2 -subj '/CN=throttle test CA'",
        "openssl req -x509 $key -keyout other.key -out other.crt -days 2 -subj '/CN=another CA'",
        "openssl req $key -keyout server.key -out server.csr -subj '/CN=throttle test server'",
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext",
        "openssl req $key -keyout client.key -out client.csr -subj '/CN=throttle test client'",
        "openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 2 -extfile client.ext",
    ) {
        system("cd '$dir' && $cmd >/dev/null 2>&1") == 0 or die "$cmd: failed\n";
    }
    chmod 0644, glob("$dir/*");  # nginx's workers (another user when run as root) read nothing
                                 # of it, but nginx -t as the test user does
}

sub _free_port {
    for (1 .. 1000) {
        my $port = 20000 + int(rand(12000));
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port,
            Proto => 'tcp', Listen => 1, ReuseAddr => 1) or next;
        close $s;
        return $port;
    }
    die "no free port found\n";
}

# A free port whose cluster bus port (+10000) is free too.
sub _free_cluster_port {
    for (1 .. 1000) {
        my $port = Throttle::Redis::_free_port();
        next if $port > 55535;
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port + 10000,
            Proto => 'tcp', Listen => 1, ReuseAddr => 1) or next;
        close $s;
        return $port;
    }
    die "no free port pair found\n";
}

# ---------------------------------------------------------------------------------------
# process

# Starts redis-server (empty) and waits until it answers PING (10 s at most).
sub start {
    my ($self) = @_;
    die "redis already running\n" if $self->{pid};
    my @cmd = ($self->{server}, ($self->{sentinel_conf} ? ($self->{sentinel_conf}, '--sentinel') : ()),
        '--port', $self->{port}, '--bind', '127.0.0.1', '--protected-mode', 'no',
        '--save', '', '--appendonly', 'no', '--daemonize', 'no',
        '--dir', $self->{dir}, '--dbfilename', 'dump.rdb',
        '--logfile', $self->log_path, '--loglevel', 'notice');
    push @cmd, '--unixsocket', $self->{socket}, '--unixsocketperm', '700' if $self->{socket};
    push @cmd, '--requirepass', $self->{password} if defined $self->{password};
    push @cmd, map { ('--user', split ' ') } @{ $self->{users} };
    push @cmd, @{ $self->{args} };

    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$self->{dir}/redis.out" or POSIX::_exit(126);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
        exec { $cmd[0] } @cmd or POSIX::_exit(127);
    }
    $self->{pid} = $pid;
    $self->{starts}++;
    $LIVE{$pid} = $self;
    Scalar::Util::weaken($LIVE{$pid});

    my $deadline = time + 10;
    while (1) {
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $LIVE{$pid};
            delete $self->{pid};
            die "redis-server exited at start (status $?):\n" . _slurp($self->log_path)
                . _slurp("$self->{dir}/redis.out");
        }
        my $pong = eval { $self->cli({ timeout => 1 }, 'PING') } // '';
        last if $pong eq 'PONG';
        if (time > $deadline) {
            $self->stop;
            die "redis-server did not answer PING within 10s:\n" . _slurp($self->log_path);
        }
        sleep 0.01;
    }
    return $self;
}

# Stops the server (SIGCONT in case it is paused, SIGTERM, then SIGKILL) and reaps it.
sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return $self;
    return $self if $$ != $self->{owner};
    CORE::kill 'CONT', $pid;
    CORE::kill 'TERM', $pid;
    my $deadline = time + 5;
    while (time < $deadline) {
        last if waitpid($pid, WNOHANG) == $pid;
        sleep 0.01;
    }
    if (CORE::kill 0, $pid) {
        CORE::kill 'KILL', $pid;
        waitpid $pid, 0;
    }
    delete $LIVE{$pid};
    delete $self->{pid};
    delete $self->{paused};
    return $self;
}

# SIGKILL: the server is gone at once (connections reset, the port refuses).
sub kill {
    my ($self) = @_;
    my $pid = $self->{pid} or return $self;
    CORE::kill 'KILL', $pid;
    waitpid $pid, 0;
    delete $LIVE{$pid};
    delete $self->{pid};
    delete $self->{paused};
    return $self;
}

# Starts again on the same port, with no data.
sub restart {
    my ($self) = @_;
    $self->kill if $self->{pid};
    unlink "$self->{dir}/dump.rdb";
    return $self->start;
}

# SIGSTOP: the server hangs (connections are accepted by the kernel, nothing answers).
sub pause {
    my ($self) = @_;
    CORE::kill 'STOP', $self->{pid} or die "pause: no redis process\n";
    $self->{paused} = 1;
    return $self;
}

sub resume {
    my ($self) = @_;
    CORE::kill 'CONT', $self->{pid} or die "resume: no redis process\n";
    delete $self->{paused};
    return $self;
}

sub DESTROY {
    my ($self) = @_;
    return if $$ != ($self->{owner} // 0);
    local ($?, $!, $@);
    $self->stop if $self->{pid};
}

END {
    for my $r (grep { defined } values %LIVE) {
        local $?;
        $r->stop;
    }
}

# ---------------------------------------------------------------------------------------
# commands

# Runs redis-cli -p PORT @args and returns its output (raw: one value per line), chomped;
# in list context, the lines. An optional first argument { timeout => 5, db => N } sets a
# deadline (the client is killed then, and cli dies) and the database. Dies when redis-cli
# fails to run; a Redis error reply is returned as text ("ERR ...", "WRONGPASS ...").
sub cli {
    my ($self, @args) = @_;
    my $opt = ref $args[0] eq 'HASH' ? shift @args : {};
    my $timeout = $opt->{timeout} // 5;
    my @cmd = ($self->{cli_path}, '-h', '127.0.0.1', '-p', $self->{port});
    push @cmd, '-n', $opt->{db} if defined $opt->{db};
    push @cmd, @args;

    pipe my $rd, my $wr or die "pipe: $!\n";
    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        close $rd;
        open STDIN, '<', '/dev/null';
        open STDOUT, '>&', $wr or POSIX::_exit(126);
        open STDERR, '>&', $wr or POSIX::_exit(126);
        if (defined $self->{password}) {
            $ENV{REDISCLI_AUTH} = $self->{password};
        } else {
            delete $ENV{REDISCLI_AUTH};
        }
        exec { $cmd[0] } @cmd or POSIX::_exit(127);
    }
    close $wr;
    my $out = '';
    my $deadline = time + $timeout;
    my $sel = IO::Select->new($rd);
    while (1) {
        my $left = $deadline - time;
        if ($left <= 0) {
            CORE::kill 'KILL', $pid;
            waitpid $pid, 0;
            close $rd;
            die "redis-cli @args: no answer within ${timeout}s\n";
        }
        next unless $sel->can_read($left);
        my $n = sysread $rd, $out, 65536, length $out;
        last if !$n;
    }
    close $rd;
    waitpid $pid, 0;
    die "redis-cli @args: could not run (status $?)\n" if $? >> 8 == 126 || $? >> 8 == 127;
    $out =~ s/\n\z//;
    return wantarray ? split(/\n/, $out) : $out;
}

# Value of a string key (undef when missing).
sub get {
    my ($self, $key, %opt) = @_;
    my $v = $self->cli({ db => $opt{db} }, 'GET', $key);
    return $v eq '' ? undef : $v;
}

# Keys matching a pattern (KEYS), sorted.
sub keys {
    my ($self, $pattern, %opt) = @_;
    my @k = grep { length } $self->cli({ db => $opt{db} }, 'KEYS', $pattern // '*');
    return sort @k;
}

# { key => value } of the keys matching a pattern, and their sum (second value in list context).
sub values_of {
    my ($self, $pattern, %opt) = @_;
    my %v;
    for my $k ($self->keys($pattern, %opt)) {
        $v{$k} = $self->cli({ db => $opt{db} }, 'GET', $k);
    }
    my $sum = 0;
    $sum += $_ =~ /^\d+$/ ? $_ : 0 for values %v;
    return wantarray ? (\%v, $sum) : \%v;
}

# Sum of the integer values of the keys matching a pattern (0 when there are none), the sync
# flush's batch ids (BASE:flush:ID, value 1) left out: the requests counted.
sub sum {
    my ($self, $pattern, %opt) = @_;
    my $v = $self->values_of($pattern, %opt);
    my $sum = 0;
    $sum += $v->{$_} =~ /^\d+$/ ? $v->{$_} : 0 for grep { !/:flush:[^:]*\z/ } CORE::keys %$v;
    return $sum;
}

# INFO commandstats as { command => calls } (lowercase names: evalsha, eval, script|load, ...).
sub info_commandstats {
    my ($self) = @_;
    my %calls;
    for ($self->cli('INFO', 'commandstats')) {
        $calls{$1} = $2 if /^cmdstat_([^:]+):calls=(\d+)/;
    }
    return \%calls;
}

# Script calls so far (EVALSHA + EVAL).
sub script_calls {
    my ($self) = @_;
    my $s = $self->info_commandstats;
    return ($s->{evalsha} // 0) + ($s->{eval} // 0);
}

# CONFIG RESETSTAT: commandstats start from zero.
sub reset_stats {
    my ($self) = @_;
    $self->cli('CONFIG', 'RESETSTAT');
    return $self;
}

# Connected clients other than redis-cli itself (INFO clients).
sub clients {
    my ($self) = @_;
    my ($n) = map { /^connected_clients:(\d+)/ ? $1 : () } $self->cli('INFO', 'clients');
    return ($n // 1) - 1;
}

# ---------------------------------------------------------------------------------------
# Redis Cluster

# A Redis Cluster of real redis-servers on loopback, for the cluster tests (issue 12):
#
#   my $cluster = Throttle::Redis->cluster(masters => 3, replicas => 0, t => $t);
#   $cluster->seeds;          # "127.0.0.1:P1 127.0.0.1:P2 127.0.0.1:P3" (the masters)
#   $cluster->masters;        # Throttle::Redis objects, in slot order; ->replicas likewise
#   $cluster->cli('GET', 'k') # redis-cli -c on the first master (follows redirections)
#   $cluster->stop;           # kills every node (also when the object goes away)
#
# masters * (1 + replicas) nodes, each --cluster-enabled with --cluster-node-timeout 1000
# (node_timeout => ms) and the options of new() (args => [...] goes to every node), joined by
# redis-cli --cluster create; returns once every node says cluster_state:ok, 16384 slots
# assigned and all nodes known, and every replica is attached to its master (20 s at most,
# then it dies with the nodes' state). tls => 1: every node also has a TLS port (new()'s tls,
# one set of certificates for all, SAN IP:127.0.0.1) with --tls-cluster yes and
# --tls-replication yes; ->tls_seeds are the masters' TLS addresses, ->tls_dir the certificates.
sub cluster {
    my ($class, %opt) = @_;
    my $masters  = $opt{masters}  // 3;
    my $replicas = $opt{replicas} // 0;
    die "a Redis Cluster needs at least 3 masters\n" if $masters < 3;
    my $timeout = $opt{node_timeout} // 1000;
    my @args = (@{ $opt{args} // [] }, '--cluster-node-timeout', $timeout);
    my %node_opt = map { exists $opt{$_} ? ($_ => $opt{$_}) : () } qw(t password users);
    my @nodes;
    if ($opt{tls}) {
        # TLS on every node (one set of certificates), the cluster bus and replication too
        # (new()); the plaintext ports stay for redis-cli (--cluster create, the checks).
        push @nodes, $class->new(%node_opt, cluster => 1, tls => 1, args => [@args]);
        $node_opt{tls} = 1;
        $node_opt{tls_certs} = $nodes[0]->tls_dir;
    }
    push @nodes, map { $class->new(%node_opt, cluster => 1, args => [@args]) }
        1 .. $masters * (1 + $replicas) - @nodes;
    my $self = bless { nodes => \@nodes, owner => $$ }, 'Throttle::Redis::Cluster';

    my @cmd = ($nodes[0]{cli_path}, '--cluster', 'create', (map { $_->address } @nodes),
        '--cluster-replicas', $replicas, '--cluster-yes');
    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', "$nodes[0]{dir}/cluster-create.log" or POSIX::_exit(126);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
        $ENV{REDISCLI_AUTH} = $opt{password} if defined $opt{password};
        exec { $cmd[0] } @cmd or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    die "redis-cli --cluster create failed (status $?):\n"
        . _slurp("$nodes[0]{dir}/cluster-create.log") if $?;

    my $n = @nodes;
    my $ok = wait_for(sub {
        for my $node (@nodes) {
            my $info = eval { $node->cli({ timeout => 2 }, 'CLUSTER', 'INFO') } // '';
            return 0 unless $info =~ /^cluster_state:ok\r?$/m
                && $info =~ /^cluster_slots_assigned:16384\r?$/m
                && $info =~ /^cluster_known_nodes:$n\r?$/m;
        }
        return 1;
    }, timeout => 20, step => 0.05);
    die "the cluster did not come up within 20s:\n"
        . join('', map { $_->address . ': ' . (eval { scalar $_->cli('CLUSTER', 'INFO') } // '?')
            . "\n" } @nodes) unless $ok;

    # Who is what, as the cluster says (redis-cli picks the masters).
    for my $node (@nodes) {
        my @role = $node->cli('ROLE');
        push @{ $self->{ $role[0] eq 'master' ? 'masters' : 'replicas' } }, $node;
    }
    $self->{masters} = [sort { $a->first_slot <=> $b->first_slot } @{ $self->{masters} }];
    die "the cluster has " . scalar(@{ $self->{masters} }) . " masters, not $masters\n"
        if @{ $self->{masters} } != $masters;
    if ($replicas) {
        my $linked = wait_for(sub {
            for my $r (@{ $self->{replicas} }) {
                my $info = eval { scalar $r->cli('INFO', 'replication') } // '';
                return 0 unless $info =~ /^master_link_status:up\r?$/m;
            }
            return 1;
        }, timeout => 20, step => 0.05);
        die "the replicas did not attach within 20s\n" unless $linked;
    }
    return $self;
}

# CLUSTER NODES as this node sees it: { "127.0.0.1:PORT" => { id, flags => [...], master
# (its master's id, or "-"), slots => [[first, last], ...] } } (slots in migration left out).
sub cluster_nodes {
    my ($self) = @_;
    my %nodes;
    for my $line ($self->cli('CLUSTER', 'NODES')) {
        my ($id, $addr, $flags, $master, undef, undef, undef, undef, @slots) = split ' ', $line;
        next unless defined $addr;
        $addr =~ s/@.*//;
        $nodes{$addr} = { id => $id, flags => [split /,/, $flags], master => $master,
            slots => [map { /^(\d+)(?:-(\d+))?$/ ? [$1, $2 // $1] : () } @slots] };
    }
    return \%nodes;
}

# The first slot this node serves as a master (16384 when none).
sub first_slot {
    my ($self) = @_;
    my $me = $self->cluster_nodes->{ $self->address } or return 16384;
    my @firsts = sort { $a <=> $b } map { $_->[0] } @{ $me->{slots} };
    return @firsts ? $firsts[0] : 16384;
}

# ---------------------------------------------------------------------------------------
# polling

# Calls $cond until it returns true or $timeout seconds pass (polling every $step s).
# Returns the last value of $cond (false on timeout).
sub wait_for {
    my ($cond, %opt) = @_;
    my $deadline = time + ($opt{timeout} // 10);
    my $step = $opt{step} // 0.02;
    while (1) {
        my $v = $cond->();
        return $v if $v;
        return $v if time > $deadline;
        sleep $step;
    }
}

# Windows are aligned to the epoch (r/h: each UTC hour). A test that checks exact counts in
# one window calls this first: if fewer than $needed seconds are left in the current window
# of $period seconds, it waits for the next one (at most $needed seconds).
sub clear_of_window_edge {
    my ($period, $needed) = @_;
    my $now = time;
    my $left = $period - ($now - $period * int($now / $period));
    sleep $left + 0.05 if $left < $needed;
    return;
}

sub _slurp {
    my ($path) = @_;
    open my $fh, '<', $path or return '';
    local $/;
    return <$fh> // '';
}

package Throttle::Redis::Cluster;

# What Throttle::Redis->cluster returns (see there).

use strict;
use warnings;

sub nodes    { @{ $_[0]{nodes} } }
sub masters  { @{ $_[0]{masters} } }
sub replicas { @{ $_[0]{replicas} // [] } }
sub seeds    { join ' ', map { $_->address } $_[0]->masters }
sub tls_seeds { join ' ', map { '127.0.0.1:' . $_->tls_port } $_[0]->masters }
sub tls_dir   { ($_[0]->nodes)[0]->tls_dir }

# redis-cli -c on the first master: follows MOVED/ASK.
sub cli {
    my ($self, @args) = @_;
    my $opt = ref $args[0] eq 'HASH' ? shift @args : {};
    return ($self->masters)[0]->cli($opt, '-c', @args);
}

# Replaces %%REDIS_CLUSTER%% (the masters' addresses, space-separated) in a config; with
# tls => 1 also %%REDIS_CLUSTER_TLS%% (their TLS addresses) and %%REDIS_TLS_DIR%%.
sub fill {
    my ($self, $text) = @_;
    my $seeds = $self->seeds;
    if (my $dir = $self->tls_dir) {
        my $tls = $self->tls_seeds;
        $text =~ s/%%REDIS_CLUSTER_TLS%%/$tls/g;
        $text =~ s/%%REDIS_TLS_DIR%%/$dir/g;
    }
    $text =~ s/%%REDIS_CLUSTER%%/$seeds/g;
    return $text;
}

# Kills every node (SIGKILL: a cluster has nothing to save).
sub stop {
    my ($self) = @_;
    $_->kill for grep { defined } $self->nodes;  # global destruction may have freed some
    return $self;
}

sub DESTROY {
    my ($self) = @_;
    return if $$ != ($self->{owner} // 0);
    local ($?, $!, $@);
    $self->stop;
}

1;

