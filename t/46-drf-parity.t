# Parity with Django REST Framework's own throttles (issue 10, item 8): the same request
# sequences go (a) straight to gunicorn, to views limited by DRF's AnonRateThrottle +
# UserRateThrottle and ScopedRateThrottle, and (b) through nginx, to the same views without
# DRF throttles, limited by the module's zones keyed as conf.examples/django.conf keys them
# (anonymous: the address; signed-in: the user id Django verified for the session cookie,
# asked once per session through throttle_identity; login: the address). The 200/429
# counts of each sequence are compared. Each sequence comes from its own loopback address
# (127.0.0.x) and, when signed in, its own user: no sequence spends another's quota.
#
# Two sessions of one user and invented session cookies count as DRF counts them (they were
# TODO tests while the user zone was keyed on the cookie). Where the module differs by
# design (nginx limits whatever a location sees, 404s included, and keys anonymous clients on
# the connection's address, never on X-Forwarded-For), both sides are asserted.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Throttle::Test;
use Throttle::Django;
use Time::HiRes qw(time sleep);

my $t  = Throttle::Test->new(workers => 2);
my $dj = Throttle::Django->new(t => $t, rates => { anon => '5/min', user => '10/min',
        login => '3/min' })->start;

$t->write_conf($dj->fill(<<'EOF'))->run;
http {
    # As conf.examples/django.conf, in local mode, at DRF's rates: the user zone keyed on the
    # user id Django verified for the session (asked once per session at /_identity/), everyone
    # else (no session, or one Django does not know) on the address.
    throttle_secret test-secret-0123456789abcdef;
    throttle_identity $cookie_sessionid resolve=/_identity/ zone=ids:1m;
    map $throttle_user_id $anon_ip {
        ""      $binary_remote_addr;
        default "";
    }
    throttle_zone $anon_ip            zone=anon:1m  rate=5r/m;
    throttle_zone $throttle_user_id   zone=user:1m  rate=10r/m;
    throttle_zone $binary_remote_addr zone=login:1m rate=3r/m;

    upstream django {
        server %%DJANGO%%;
    }

    server {
        listen 127.0.0.1:%%PORT%%;
        proxy_http_version 1.1;
        proxy_set_header Connection "";

        location = /_identity/ {
            internal;
            proxy_pass http://django;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Cookie $http_cookie;
        }
        location /plain/ {
            throttle_identity_resolve on;
            throttle zone=anon;
            throttle zone=user;
            proxy_pass http://django;
        }
        location = /plain/login-scope/ {
            throttle zone=login;
            proxy_pass http://django;
        }
    }
}
EOF

# A step is [method, path under the prefix, cookie index (undef: none), body, [more header
# pairs]]; a sequence
# runs its steps in order, against DRF (prefix /api/, gunicorn) or the module (prefix
# /plain/, nginx), from one address. Returns the responses.
my %sent = (drf => 0, module => 0, module_429 => 0);
sub run_sequence {
    my ($side, $from, $steps, $cookies) = @_;
    my ($prefix, $port) = $side eq 'drf' ? ('/api/', $dj->port) : ('/plain/', $t->port);
    my @r;
    for my $s (@$steps) {
        my ($method, $path, $ci, $body, $more) = @$s;
        my @h = @{ $more // [] };
        push @h, Cookie => $cookies->[$ci] if defined $ci;
        push @h, 'Content-Type' => 'application/x-www-form-urlencoded' if defined $body;
        my $r = Throttle::Django::http($port, $method, $prefix . $path, \@h, $body, from => $from);
        diag("$side $method $prefix$path: $r->{error}") if $r->{error};
        push @r, $r;
    }
    $sent{$side} += @r;
    $sent{module_429} += grep { $_->{status} == 429 } @r if $side eq 'module';
    return @r;
}

# The module's sliding window is aligned to the clock's minutes: a sequence cut by a minute
# edge is counted differently (correctly, but not as DRF's sliding log counts it). A module
# sequence that crossed an edge (the clock read before its first request and after its last
# answer are in different minutes) runs again, from another address and with fresh sessions
# (its keys are new), right after the edge: no waiting, and no time asserted.
sub module_sequence {
    my ($from, $steps, $login) = @_;
    for my $try (0 .. 2) {
        (my $addr = $from) =~ s/^127\.0\./127.$try./;
        my $cookies = $login->();
        my $t0 = time;
        my @r = run_sequence('module', $addr, $steps, $cookies);
        return @r if int($t0 / 60) == int(time / 60) || $try == 2;
        diag("the module's sequence from $addr crossed a minute edge: once more");
    }
}

# Both sides of one sequence; users log in afresh for each side (login is not limited).
sub both {
    my (%s) = @_;
    my $login = sub { [map { $dj->login($_) } @{ $s{logins} // [] }] };
    my @drf = run_sequence('drf', $s{from}, $s{steps}, $login->());
    my @mod = module_sequence($s{from}, $s{steps}, $login);
    return (\@drf, \@mod);
}

sub tally { my %n; $n{ $_->{status} }++ for @_; return \%n }

sub show { my $h = shift; join ', ', map { "$_: $h->{$_}" } sort keys %$h }

# Retry-After on every 429: present, a whole number of seconds, at least 1 and at most what
# the window implies (DRF's sliding log: one period; the module's sliding window counter may
# hold a client into the next window: two periods).
sub check_retry_after {
    my ($what, $max, @r) = @_;
    my @bad = grep {
        my $v = $_->{headers}{'retry-after'};
        !defined $v || $v !~ /^\d+$/ || $v < 1 || $v > $max
    } grep { $_->{status} == 429 } @r;
    my $n = grep { $_->{status} == 429 } @r;
    ok($n && !@bad, "$what: Retry-After on each of the $n 429s, 1..$max s")
        or diag(join ', ', map { $_->{headers}{'retry-after'} // 'none' } @bad);
}

# The application as the other tests rely on it, straight to gunicorn: the identity view
# shipped in conf.examples/django/throttle_identity.py, and DRF's headers on per-user reads.
{
    my $alice = $dj->login('alice');
    my $r = $dj->get('/_identity/', Cookie => $alice);
    is($r->{status}, 200, 'identity: a valid session is known');
    is($r->{headers}{'x-user-id'}, $dj->user_id('alice'), 'identity: X-User-Id is the user id');
    like($r->{headers}{'cache-control'} // '', qr/no-store/, 'identity: not to be stored');
    is($dj->request('HEAD', '/_identity/', [Cookie => $alice])->{status}, 200, 'identity: HEAD too');
    is($dj->request('POST', '/_identity/', [Cookie => $alice], '')->{status}, 405,
        'identity: GET and HEAD only');
    my $other = $dj->login('alice');
    isnt($other, $alice, 'a second login makes a second session');
    is($dj->get('/_identity/', Cookie => $other)->{headers}{'x-user-id'}, $dj->user_id('alice'),
        'identity: both sessions name the same user');
    $r = $dj->get('/_identity/');
    is($r->{status}, 401, 'identity: no cookie is anonymous');
    ok(!exists $r->{headers}{'x-user-id'}, 'identity: and names nobody');
    is($dj->get('/_identity/', Cookie => 'sessionid=' . ('a' x 32))->{status}, 401,
        'identity: an invented session is anonymous');
    is($dj->logout($other)->{status}, 200, 'logout');
    is($dj->get('/_identity/', Cookie => $other)->{status}, 401,
        'identity: a logged-out session is anonymous');
    is($dj->get('/_identity/', Cookie => $alice)->{status}, 200, 'identity: the other stays');

    $r = $dj->get('/plain/review/today/', Cookie => $alice);
    is($r->{status}, 200, 'per-user read');
    like($r->{headers}{vary} // '', qr/\bAccept\b/, 'per-user read: DRF sends Vary: Accept');
    is($r->{headers}{'cache-control'}, 'private', 'per-user read: Cache-Control: private');
    my ($before) = $r->{body} =~ /"counter":(\d+)/;
    is($dj->request('POST', '/plain/review/', [Cookie => $alice], '')->{status}, 200, 'write');
    my ($after) = $dj->get('/plain/review/today/', Cookie => $alice)->{body} =~ /"counter":(\d+)/;
    is($after, $before + 1, 'the write changed what the read shows');
    is($dj->get('/plain/review/today/')->{status}, 403, 'per-user read: anonymous refused');

    $r = $dj->request('POST', '/api/auth/login/', ['Content-Type' => 'application/json'],
        '{"username":"carol","password":"carol-pw"}');
    my ($json) = ($r->{headers}{'set-cookie'} // '') =~ /(sessionid=\w+)/;
    is($r->{status}, 200, 'login with a JSON body');
    is($json && $dj->get('/_identity/', Cookie => $json)->{headers}{'x-user-id'},
        $dj->user_id('carol'), 'login with a JSON body: a session of carol');
    is($dj->request('POST', '/api/auth/login/', ['Content-Type' => 'application/json'],
            '{"username":"carol","password":"wrong"}')->{status}, 400, 'login: wrong password');
}
$dj->reset;

my $ITEMS = ['GET', 'items/'];
my ($drf, $mod);

# 1. Anonymous, one address: DRF's AnonRateThrottle (5/min per address) vs the anon zone.
($drf, $mod) = both(from => '127.0.0.2', steps => [($ITEMS) x 8]);
is_deeply(tally(@$drf), { 200 => 5, 429 => 3 }, 'anonymous: DRF admits 5 of 8');
is_deeply(tally(@$mod), tally(@$drf), 'anonymous: the module counts as DRF does')
    or diag('module: ' . show(tally(@$mod)));
check_retry_after('anonymous, DRF', 60, @$drf);
check_retry_after('anonymous, module', 120, @$mod);

# 2. A user with one session: UserRateThrottle (10/min per user) vs the user zone.
($drf, $mod) = both(from => '127.0.0.3', logins => ['alice'],
    steps => [([@$ITEMS, 0]) x 13]);
is_deeply(tally(@$drf), { 200 => 10, 429 => 3 }, 'one session: DRF admits 10 of 13');
is_deeply(tally(@$mod), tally(@$drf), 'one session: the module counts as DRF does')
    or diag('module: ' . show(tally(@$mod)));
check_retry_after('one session, DRF', 60, @$drf);
check_retry_after('one session, module', 120, @$mod);
ok((grep { $_->{status} == 200 && $_->{body} =~ /"user_id":(\d+)/
            && $1 == $dj->user_id('alice') } @$mod), 'one session: the view saw alice');

# 3. The same user with two sessions, alternating: DRF counts per user (10 in all); the
# module keys the user zone on the verified user id: the same 10 for both sessions.
($drf, $mod) = both(from => '127.0.0.4', logins => ['bob', 'bob'],
    steps => [map { [@$ITEMS, $_ % 2] } 0 .. 15]);
is_deeply(tally(@$drf), { 200 => 10, 429 => 6 }, 'two sessions of one user: DRF admits 10 of 16');
check_retry_after('two sessions, DRF', 60, @$drf);
is_deeply(tally(@$mod), tally(@$drf), 'two sessions of one user: the module counts per user');

# 4. An invented session cookie per request: DRF sees an anonymous client (5 per address);
# the module asks Django, which knows none of them: anonymous, limited on the address.
sub invent { [map { 'sessionid=' . join('', map { ('a' .. 'z', 0 .. 9)[rand 36] } 1 .. 32) } 0 .. 7] }
my $steps = [map { [@$ITEMS, $_] } 0 .. 7];
($drf, $mod) = ([run_sequence('drf', '127.0.0.5', $steps, invent())],
    [module_sequence('127.0.0.5', $steps, \&invent)]);
is_deeply(tally(@$drf), { 200 => 5, 429 => 3 }, 'invented session cookies: DRF counts them anonymous');
is_deeply(tally(@$mod), tally(@$drf), 'invented session cookies: the module counts them anonymous');

# 5. The scoped login view: ScopedRateThrottle scope "login" (3/min per address for anonymous
# clients) vs the login zone; wrong passwords (400) until limited.
my $bad = 'username=carol&password=wrong';
($drf, $mod) = both(from => '127.0.0.6', steps => [(['POST', 'login-scope/', undef, $bad]) x 5]);
is_deeply(tally(@$drf), { 400 => 3, 429 => 2 }, 'scoped login: DRF lets 3 attempts through');
is_deeply(tally(@$mod), tally(@$drf), 'scoped login: the module counts as DRF does')
    or diag('module: ' . show(tally(@$mod)));
check_retry_after('scoped login, DRF', 60, @$drf);
check_retry_after('scoped login, module', 120, @$mod);

# 6. A 404 path, then the list, anonymous: DRF throttles views, so 404s cost nothing; the
# module limits what the location sees, so the 404s spend the address's anonymous quota (by
# design: scanners are limited too).
($drf, $mod) = both(from => '127.0.0.7', steps => [(['GET', 'nope/']) x 6, ($ITEMS) x 6]);
is_deeply(tally(@$drf), { 404 => 6, 200 => 5, 429 => 1 }, '404 path: DRF does not count 404s');
is_deeply(tally(@$mod), { 404 => 5, 429 => 7 }, '404 path: the module counts them in the location');
is_deeply([map { $_->{status} } @$mod[0 .. 4]], [(404) x 5], '404 path: the first 5 reach Django');

# 7. Anonymous, one address, a different X-Forwarded-For on each request: with NUM_PROXIES
# unset (its default) DRF keys anonymous clients on the whole X-Forwarded-For, which the client
# writes, so it limits nothing; the module keys on the connection's address (behind a trusted
# proxy, set it with realip first). By design: both asserted.
($drf, $mod) = both(from => '127.0.0.8', steps => [map { [@$ITEMS, undef, undef,
            ['X-Forwarded-For' => "192.0.2.$_"]] } 1 .. 8]);
is_deeply(tally(@$drf), { 200 => 8 }, 'forged X-Forwarded-For: DRF keys on it, admits all 8');
is_deeply(tally(@$mod), { 200 => 5, 429 => 3 }, 'forged X-Forwarded-For: the module keys on the address');

# DRF's 429s are answered by Django: every request reached it. The module's are answered by
# nginx: Django saw only the others. (gunicorn logs a request after answering it: polled.)
is($dj->wait_for_count($sent{drf}, qr{^/api/(?!auth/)}), $sent{drf},
    "Django answered all $sent{drf} requests sent to DRF");
my $passed = $sent{module} - $sent{module_429};
is($dj->wait_for_count($passed, qr{^/plain/}), $passed,
    "Django saw $passed of the $sent{module} requests sent through the module (none refused)");

$t->done;
