#!/usr/bin/perl
# Several zones: the issue's anon/user/login/ip example (a map routes anonymous clients to
# one zone and signed-in ones to another; empty keys are skipped), a rejected request
# consuming nothing in any zone, and inheritance of `throttle` like limit_req.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use Throttle::Test;

my $t = Throttle::Test->new->write_conf(<<'EOF')->run;
http {
    map $cookie_sessionid $anon_ip { ""  $binary_remote_addr; default ""; }
    throttle_zone $anon_ip            zone=anon:1m  rate=3r/h;
    throttle_zone $cookie_sessionid   zone=user:1m  rate=5r/h;
    throttle_zone $binary_remote_addr zone=login:1m rate=2r/m;
    throttle_zone $binary_remote_addr zone=ip:1m    rate=20r/h;

    throttle_zone $binary_remote_addr zone=a:1m rate=5r/m;
    throttle_zone $binary_remote_addr zone=b:1m rate=2r/m;

    throttle_zone $binary_remote_addr zone=srv:1m rate=2r/h;
    throttle_zone $binary_remote_addr zone=own:1m rate=4r/h;
    throttle_zone $http_x_nokey       zone=nokey:1m rate=1r/h;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /api/ {
            throttle zone=anon; throttle zone=user; throttle zone=ip;
            proxy_pass http://127.0.0.1:%%PORT_2%%;
        }
        location = /api/auth/login/ { throttle zone=login; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }

    server {
        listen 127.0.0.1:%%PORT_3%%;
        location /ab/ { throttle zone=a; throttle zone=b; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /a/  { throttle zone=a; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }

    server {
        listen 127.0.0.1:%%PORT_4%%;
        throttle zone=srv;
        location /inherit/ { proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /own/     { throttle zone=own; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /empty/   { throttle zone=nokey; add_header X-Status "[$throttle_status]" always;
                             proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }

    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF

sub zone_of {    # the zone named in the RateLimit field, and r=
    my ($r) = @_;
    my ($z, $rem) = ($r->{headers}{ratelimit} // '') =~ /^"([^"]+)";r=(\d+);/;
    return ($z // '', $rem);
}
sub rejected_by { my ($r) = @_; eval { decode_json($r->{body})->{zone} } // '' }

my $r;

# --- anonymous: anon (3r/h) is the most restrictive of anon and ip
for my $i (1 .. 3) {
    $r = $t->get('/api/x');
    is($r->{status}, 200, "anonymous $i passes");
    is_deeply([zone_of($r)], ['anon', 3 - $i], "anonymous $i: RateLimit names anon, r=" . (3 - $i));
}
is($r->{headers}{'ratelimit-policy'}, '"anon";q=3;w=3600', 'anonymous: RateLimit-Policy');
$r = $t->get('/api/x');
is($r->{status}, 429, 'anonymous 4 rejected');
is(rejected_by($r), 'anon', 'anonymous 4 rejected by anon');

# --- signed in: user applies, anon does not (its key is empty)
for my $i (1 .. 5) {
    $r = $t->get('/api/x', Cookie => 'sessionid=s1');
    is($r->{status}, 200, "session s1 request $i passes although anon is exhausted");
    is_deeply([zone_of($r)], ['user', 5 - $i], "session s1 request $i: RateLimit names user");
}
is($r->{headers}{'ratelimit-policy'}, '"user";q=5;w=3600', 'session: RateLimit-Policy');
$r = $t->get('/api/x', Cookie => 'sessionid=s1');
is($r->{status}, 429, 'session s1 request 6 rejected');
is(rejected_by($r), 'user', 'session s1 rejected by user');

is($t->get('/api/x', Cookie => 'sessionid=s2')->{status}, 200, 'session s2 has its own bucket')
    for 1 .. 5;
is($t->get('/api/x', Cookie => 'sessionid=s2')->{status}, 429, 'session s2 request 6 rejected');

# ip counted 3 + 5 + 5 = 13 so far; a client rotating cookies is capped by ip at 20
is($t->get('/api/x', Cookie => "sessionid=s3")->{status}, 200, 'session s3 passes') for 1 .. 5;
is($t->get('/api/x', Cookie => "sessionid=s4")->{status}, 200, 'session s4 passes') for 1 .. 2;
$r = $t->get('/api/x', Cookie => 'sessionid=s4');
is($r->{status}, 429, 'rotating cookies: the 21st request from the address is rejected');
is(rejected_by($r), 'ip', 'rotating cookies: rejected by ip, not user');
is($t->get('/api/x', Cookie => 'sessionid=s5')->{status}, 429, 'a fresh session is capped by ip');

# --- login location: its own zone only
$r = $t->get('/api/auth/login/');
is($r->{status}, 200, 'login 1 passes (ip and anon are exhausted but not applied here)');
is_deeply([zone_of($r)], ['login', 1], 'login: RateLimit names login');
is($t->get('/api/auth/login/', Cookie => 'sessionid=s9')->{status}, 200, 'login 2 passes');
$r = $t->get('/api/auth/login/');
is($r->{status}, 429, 'login 3 rejected');
is(rejected_by($r), 'login', 'login rejected by login');

# --- a request rejected by zone b consumes nothing in zone a
my $ab = sub { $t->request('GET', $_[0], {}, undef, port => $t->port(3)) };
$r = $ab->('/ab/');
is($r->{status}, 200, 'a+b: 1 passes');
is_deeply([zone_of($r)], ['b', 1], 'a+b: RateLimit names b, the most restrictive');
is($ab->('/ab/')->{status}, 200, 'a+b: 2 passes');
for my $i (3 .. 6) {
    $r = $ab->('/ab/');
    is($r->{status}, 429, "a+b: $i rejected");
    is(rejected_by($r), 'b', "a+b: $i rejected by b");
}
for my $i (1 .. 3) {
    $r = $ab->('/a/');
    is($r->{status}, 200, "a alone: $i passes (a counted only the 2 admitted requests)");
}
is((zone_of($r))[1], 0, 'a alone: r=0 after 5 admitted in total');
is($ab->('/a/')->{status}, 429, 'a alone: then rejected');

# --- inheritance: a level with its own `throttle` replaces the inherited ones
my $inh = sub { $t->request('GET', $_[0], $_[1] // {}, undef, port => $t->port(4)) };
$r = $inh->('/inherit/');
is_deeply([zone_of($r)], ['srv', 1], 'server-level throttle inherited');
$inh->('/inherit/');
is($inh->('/inherit/')->{status}, 429, 'inherited zone rejects');
for my $i (1 .. 4) {
    $r = $inh->('/own/');
    is($r->{status}, 200, "own zone $i passes: srv not inherited");
    is((zone_of($r))[0], 'own', "own zone $i: RateLimit names own");
}
is($inh->('/own/')->{status}, 429, 'own zone rejects');

# --- every zone's key empty: nothing applies
for (1 .. 3) {
    $r = $inh->('/empty/');
    last if $r->{status} != 200;
}
is($r->{status}, 200, 'empty key: never limited');
is($r->{headers}{'x-status'}, '[]', 'empty key: $throttle_status is empty');
ok(!exists $r->{headers}{ratelimit}, 'empty key: no RateLimit field');
is($inh->('/empty/', { 'X-Nokey' => 'z' })->{status}, 200, 'with a key the zone applies: 1');
$r = $inh->('/empty/', { 'X-Nokey' => 'z' });
is($r->{status}, 429, 'with a key the zone applies: 2 rejected');
is($r->{headers}{'x-status'}, '[REJECTED]', '$throttle_status REJECTED');

$t->done;
