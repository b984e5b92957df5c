#!/usr/bin/perl
# Issue 10's failures, against the real Django/DRF application (t/django/, gunicorn) with the
# module's verified identity (throttle_identity asks Django's /_identity/ once per session):
#   - a write through one session invalidates the user's cached reads in every session (the
#     cache keys on the verified user id, not on the cookie);
#   - DRF's default renderers (Vary: Accept; Django's sessions add Vary: Cookie) no longer
#     make every read a MISS: the entry is a variant of Accept, and Cookie is covered by the
#     verified identity;
#   - no session token reaches Redis, in a key name or a value (zones, identity store, cache);
#   - one user never reads another's entry.
# (Invented cookies and two sessions of one user are compared with DRF in t/46.)

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;
use Throttle::Django;

my $t  = Throttle::Test->new(workers => 2);
my $dj = Throttle::Django->new(t => $t)->start;
my $r  = Throttle::Redis->new(t => $t);

$t->write_conf($r->fill($dj->fill(<<'EOF')))->run;
http {
    throttle_redis %%REDIS%% timeout=1s;
    throttle_secret test-secret-0123456789abcdef;
    throttle_identity $cookie_sessionid resolve=/_identity/ zone=ids:1m;
    map $throttle_user_id $anon_ip {
        ""      $binary_remote_addr;
        default "";
    }
    throttle_zone $anon_ip          zone=anon:1m rate=1000r/h mode=sync sync=100ms;
    throttle_zone $throttle_user_id zone=user:1m rate=1000r/h mode=sync sync=100ms;
    throttle_zone $cookie_sessionid zone=raw:1m  rate=1000r/h mode=strict;

    upstream django { server %%DJANGO%%; }

    server {
        listen 127.0.0.1:%%PORT%%;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        throttle_identity_resolve on;
        add_header X-Cache $throttle_cache_status always;

        location = /_identity/ {
            internal;
            proxy_pass http://django;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Cookie $http_cookie;
        }
        location /plain/review/today/ {
            throttle zone=anon;
            throttle zone=user;
            throttle zone=raw;
            throttle_cache review;
            throttle_cache_user $throttle_user_id;
            throttle_cache_valid 200 10m;
            proxy_pass http://django;
        }
        location = /plain/review/ {
            throttle zone=user;
            throttle zone=raw;
            throttle_cache_user $throttle_user_id;
            throttle_cache_invalidate review;
            proxy_pass http://django;
        }
    }
}
EOF

my $alice1 = $dj->login('alice');
my $alice2 = $dj->login('alice');
my $bob    = $dj->login('bob');
isnt($alice1, $alice2, 'alice has two sessions');

sub read_as {
    my ($cookie, $accept) = @_;
    my $res = $t->get('/plain/review/today/', Cookie => $cookie,
        Accept => $accept // 'application/json');
    my ($user, $counter) = $res->{body} =~ /"user_id":(\d+),"counter":(\d+)/;
    return { status => $res->{status}, cache => $res->{headers}{'x-cache'} // '',
        vary => $res->{headers}{vary} // '', user => $user // -1, counter => $counter // -1 };
}

# --- DRF's Vary: Accept (and Cookie) is honoured: the second read is a HIT.
my $first = read_as($alice1);
is($first->{status}, 200, 'alice reads her review');
is($first->{user}, $dj->user_id('alice'), 'as alice');
like($first->{vary}, qr/Accept/i, "DRF's response varies on Accept ($first->{vary})");
my $again = read_as($alice1);
is($again->{cache}, 'HIT', 'the same read again is a HIT (was MISS every time)');

# --- Another session of the same user shares the entry; another user never does.
my $other = read_as($alice2);
is($other->{cache}, 'HIT', "alice's second session reads the same entry");
is($other->{user}, $dj->user_id('alice'), 'as alice');
my $b = read_as($bob);
is($b->{user}, $dj->user_id('bob'), 'bob reads his own review, never alice\'s');
isnt($b->{cache}, 'HIT', 'bob does not hit alice\'s entry');

# --- A write through one session invalidates the user's reads in every session.
my $w = $t->request('POST', '/plain/review/', [Cookie => $alice1,
    'Content-Type' => 'application/json'], '{}');
is($w->{status}, 200, 'alice writes through her first session');
like($w->{body}, qr/"counter":1\b/, 'her counter is now 1');
my $fresh = read_as($alice2);
is($fresh->{counter}, 1, 'her second session reads the new counter at once');
isnt($fresh->{cache}, 'HIT', 'not the stale entry');
is(read_as($bob)->{counter}, 0, "bob's data is untouched");

# --- An invented session is anonymous: its read is refused by Django (403), never cached.
my $invented = 'sessionid=' . join('', map { ('a' .. 'z', 0 .. 9)[rand 36] } 1 .. 32);
my $anon = read_as($invented);
isnt($anon->{status}, 200, "an invented session cookie reads nobody's data ($anon->{status})");

# --- No session token in Redis: key names and values, after the sync flushes.
my @tokens = map { Throttle::Django::session_key($_) } $alice1, $alice2, $bob, $invented;
ok(Throttle::Redis::wait_for(sub { scalar grep { /\{user:/ } split /\n/, $r->cli('KEYS', '*') },
    timeout => 10), 'the user zone reached Redis');
my @names = split /\n/, $r->cli('KEYS', '*');
ok(scalar(@names) > 3, scalar(@names) . ' keys in Redis');
my $leaks = 0;
for my $name (@names) {
    my $type = $r->cli('TYPE', $name);
    my $value = $type =~ /string/ ? $r->cli('GET', $name) : $r->cli('DUMP', $name);
    for my $tok (@tokens) {
        if (index($name, $tok) >= 0 || index($value // '', $tok) >= 0) {
            $leaks++;
            diag("session token in Redis: $name");
        }
    }
}
is($leaks, 0, 'no session token in any Redis key name or value');

$t->done;
