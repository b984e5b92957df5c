#!/usr/bin/perl
# Responses that carry Vary (one worker, real Redis, the counting Throttle::App upstream, which
# sends whatever Vary a test asks for with _vary=): a response varying on request headers other
# than Accept-Encoding is stored under a variant key (the request's key plus the normalised
# values of those headers) and found again only by a request with the same values; the base key
# holds a vary record naming the headers. Vary: * and too many or too long headers stay
# uncacheable; Vary: Cookie / Authorization only under a verified identity
# ($throttle_jwt_claim_user_id, $throttle_jwt_claim_*: here a map named so, standing in for them); a
# location whose responses are refused says why once, at warn. Invalidation and purge reach
# every variant.

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 1);
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

# $throttle_jwt_claim_user_id is made by another part of the module (the session resolver); a map of the
# same name stands in for it here: the cache decides "verified" by the variable's name.
my $conf = <<'EOF';
http {
    throttle_redis %%REDIS%% timeout=1s;
    throttle_cache_secret vary-secret-0123456789abcdef;
    throttle_cache_valid 200 60s;
    add_header X-Cache $throttle_cache_status always;
    proxy_http_version 1.1;

    map $http_x_user $throttle_jwt_claim_user_id {
        default $http_x_user;
    }

    server {
        listen 127.0.0.1:%%PORT%%;

        location /v/ {
            throttle_cache vary;
            proxy_pass http://%%APP%%;
        }
        location /cookie/ {
            throttle_cache cookieid;
            throttle_cache_user $cookie_sessionid;
            proxy_pass http://%%APP%%;
        }
        location /verified/ {
            throttle_cache verified;
            throttle_cache_user $throttle_jwt_claim_user_id;
            throttle_cache_credentials off;
            proxy_pass http://%%APP%%;
        }
        location /user/ {
            throttle_cache users;
            throttle_cache_user $cookie_sessionid;
            proxy_pass http://%%APP%%;
        }
        location /write/ {
            throttle_cache_user $cookie_sessionid;
            throttle_cache_invalidate users;
            proxy_pass http://%%APP%%;
        }
        location = /purge {
            throttle_cache_purge $arg_namespace;
        }
        location /chg/ {
            # The application's Vary (and a 1 s TTL) come from request headers, so one URL (one
            # key) can change its Vary between two fills.
            throttle_cache chg;
            proxy_pass http://%%APP%%$uri?_vary=$http_x_app_vary&_xae=1;
        }
        location /setcookie/ {
            throttle_cache loud;
            proxy_pass http://%%APP%%;
        }
    }
}
EOF
$t->write_conf($redis->fill($conf))->run;

sub xc   { $_[0]{headers}{'x-cache'} // '' }
sub n_of { (Throttle::App::parse_body($_[0]{body}) // {})->{n} // -1 }
sub hits { my ($p) = @_; $app->count(sub { $_[0]{path} eq $p }) }
# The Accept header the application saw for request n.
sub accept_of {
    my ($n) = @_;
    my ($r) = grep { $_->{n} == $n } $app->requests;
    return $r ? $r->{headers}{accept} : undef;
}

# ------------------------------------------------------------------------------------------
# Vary: Accept (Django REST Framework's renderers)

{
    my $p = '/v/accept';
    my $u = "$p?_vary=Accept";
    my $j1 = $t->get($u, Accept => 'application/json');
    is(xc($j1), 'MISS', 'Vary: Accept, application/json: MISS');
    is($j1->{headers}{vary}, 'Accept', 'the application\'s Vary is passed on');
    my $j2 = $t->get($u, Accept => 'application/json');
    ok(xc($j2) eq 'HIT' && n_of($j2) == n_of($j1), 'the same Accept again: HIT, the same body')
        or diag(xc($j2));
    is($j2->{headers}{vary}, 'Accept', 'a hit carries the stored Vary');

    my $h1 = $t->get($u, Accept => 'text/html');
    ok(xc($h1) eq 'MISS' && n_of($h1) != n_of($j1), 'text/html: MISS, its own body (never JSON\'s)')
        or diag(xc($h1));
    my $h2 = $t->get($u, Accept => 'text/html');
    ok(xc($h2) eq 'HIT' && n_of($h2) == n_of($h1), 'text/html again: HIT, the HTML body');
    my $j3 = $t->get($u, Accept => 'application/json');
    ok(xc($j3) eq 'HIT' && n_of($j3) == n_of($j1), 'application/json again: still the JSON body');
    is(accept_of(n_of($j3)), 'application/json', 'the body served was made for application/json');
    is(accept_of(n_of($h2)), 'text/html', 'the body served was made for text/html');

    # A missing Accept differs from an empty one.
    my $none = $t->get($u);
    my $empty = $t->get($u, Accept => '');
    ok(xc($none) eq 'MISS' && xc($empty) eq 'MISS' && n_of($none) != n_of($empty),
        'no Accept and an empty Accept: two entries') or diag(xc($none) . ' ' . xc($empty));
    my $none2 = $t->get($u);
    my $empty2 = $t->get($u, Accept => '');
    ok(xc($none2) eq 'HIT' && n_of($none2) == n_of($none), 'no Accept again: its entry');
    ok(xc($empty2) eq 'HIT' && n_of($empty2) == n_of($empty), 'an empty Accept again: its entry');
    is(hits($p), 4, 'four variants, four upstream requests');

    # Spacing around commas and several header lines normalise to one value; case does not.
    my $s1 = $t->get($u, Accept => 'text/html,application/json');
    my $s2 = $t->get($u, Accept => ' text/html ,  application/json ');
    my $s3 = $t->request('GET', $u, [Accept => 'text/html', Accept => 'application/json']);
    ok(xc($s1) eq 'MISS' && xc($s2) eq 'HIT' && xc($s3) eq 'HIT'
            && n_of($s2) == n_of($s1) && n_of($s3) == n_of($s1),
        'spaces around commas, and two Accept lines, are the same value')
        or diag(join ' ', map { xc($_) } $s1, $s2, $s3);
    my $s4 = $t->get($u, Accept => 'TEXT/HTML,application/json');
    is(xc($s4), 'MISS', 'a value in other letter case is another variant');

    # The record under the base key; the entries under variant keys, all under the generations.
    my @keys = grep { /\{vary:anon\}:e:/ } $redis->keys('*');
    my @records = grep { ($redis->get($_) // '') =~ /^TCV\x01accept$/ } @keys;
    is(scalar @records, 1, 'one vary record ("accept") under the base key');
}

# Concurrent misses of a resource nobody knows varies yet: they all read the base key, one
# fills (json), the others wait for it; woken, each looks its own variant up. None is ever
# answered with another Accept's body.
{
    my $p = '/v/stampede';
    my @accepts = map { $_ % 2 ? 'text/html' : 'application/json' } 0 .. 5;
    my @r = $t->concurrent(6, sub {
        ['GET', "$p?_vary=Accept&_delay=300", [Accept => $accepts[$_[0]]]] });
    my @wrong = grep { (accept_of(n_of($r[$_])) // '') ne $accepts[$_] } 0 .. 5;
    ok(!@wrong && !grep({ $_->{status} != 200 } @r), 'six concurrent misses: each gets a body made for its own Accept')
        or diag(join ' ', map { xc($_) . '/' . n_of($_) } @r);
    ok(hits($p) < 6, 'fewer than six upstream requests (' . hits($p) . ')');
    my $j = $t->get("$p?_vary=Accept&_delay=300", Accept => 'application/json');
    my $h = $t->get("$p?_vary=Accept&_delay=300", Accept => 'text/html');
    ok(xc($j) eq 'HIT' && accept_of(n_of($j)) eq 'application/json', 'then json: HIT, the json body');
    ok(xc($h) eq 'HIT' && accept_of(n_of($h)) eq 'text/html', 'then html: HIT, the html body')
        or diag(xc($h));
}

# Vary with two headers, the names in any case and order, with spaces.
{
    my $p = '/v/two';
    my $u = "$p?_vary=" . 'ACCEPT-language%20,%20%20accept';
    my @h_en = (Accept => 'application/json', 'Accept-Language' => 'en');
    my @h_de = (Accept => 'application/json', 'Accept-Language' => 'de');
    my $en = $t->get($u, @h_en);
    my $de = $t->get($u, @h_de);
    ok(xc($en) eq 'MISS' && xc($de) eq 'MISS' && n_of($en) != n_of($de),
        'Vary: Accept-Language, Accept: en and de are two entries');
    my $en2 = $t->get($u, @h_en);
    my $de2 = $t->get($u, @h_de);
    ok(xc($en2) eq 'HIT' && n_of($en2) == n_of($en), 'en again: the en entry');
    ok(xc($de2) eq 'HIT' && n_of($de2) == n_of($de), 'de again: the de entry');
    my $html = $t->get($u, Accept => 'text/html', 'Accept-Language' => 'en');
    is(xc($html), 'MISS', 'same language, other Accept: another entry');
    my @records = grep { ($redis->get($_) // '') =~ /^TCV\x01accept,accept-language$/ }
        $redis->keys('*');
    is(scalar @records, 1, 'the record names both headers, lowercase and sorted');
}

# The application changes its Vary for the same URL (one key): each fill stores what its own
# response says, and the record under the base key follows.
{
    my $u = '/chg/x';
    my $entries = sub { scalar grep { !/:[lw]$/ } $redis->keys('*{chg:anon}:e:*') };
    my $expired = sub { Throttle::Redis::wait_for(sub { $entries->() == 0 }, timeout => 10) };
    my $record = sub {
        my ($rec) = grep { defined && /^TCV\x01/ } map { $redis->get($_) } $redis->keys('*{chg:anon}:e:*');
        return defined $rec ? substr($rec, 4) : '';
    };
    my @v1 = ('X-App-Vary' => 'Accept');
    my $a1 = $t->get($u, @v1, Accept => 'application/json');
    my $a2 = $t->get($u, @v1, Accept => 'application/json');
    my $b1 = $t->get($u, @v1, Accept => 'text/html');
    ok(xc($a1) eq 'MISS' && xc($a2) eq 'HIT' && xc($b1) eq 'MISS', 'Vary: Accept: one entry per Accept')
        or diag(join ' ', map { xc($_) } $a1, $a2, $b1);
    is($record->(), 'accept', 'the record says accept');

    ok($expired->(), 'the entries expire (1 s)');
    my @v2 = ('X-App-Vary' => 'Accept,Accept-Language');    # no space: it goes into a URL
    my $c1 = $t->get($u, @v2, Accept => 'application/json', 'Accept-Language' => 'en');
    my $c2 = $t->get($u, @v2, Accept => 'application/json', 'Accept-Language' => 'en');
    my $c3 = $t->get($u, @v2, Accept => 'application/json', 'Accept-Language' => 'de');
    ok(xc($c1) eq 'MISS' && xc($c2) eq 'HIT' && n_of($c2) == n_of($c1) && xc($c3) eq 'MISS',
        'now Vary: Accept, Accept-Language: the language makes entries too')
        or diag(join ' ', map { xc($_) } $c1, $c2, $c3);
    is($record->(), 'accept,accept-language', 'the record follows');

    ok($expired->(), 'the entries expire again');
    my @v3 = ('X-App-Vary' => '');
    my $d1 = $t->get($u, @v3, Accept => 'application/json', 'Accept-Language' => 'en');
    my $d2 = $t->get($u, @v3, Accept => 'text/html');
    ok(xc($d1) eq 'MISS' && xc($d2) eq 'HIT' && n_of($d2) == n_of($d1),
        'no Vary any more: one plain entry for every Accept')
        or diag(join ' ', map { xc($_) } $d1, $d2);
    is($record->(), '', 'no record: the plain entry replaced it');
}

# ------------------------------------------------------------------------------------------
# Uncacheable

{
    my $mark = $t->log_mark;
    for my $case (['Vary: *', '/v/star?_vary=*'],
                  ['five headers', '/v/five?_vary=a,b,c,d,e'],
                  ['a name of 65 bytes', '/v/longname?_vary=' . ('x' x 65)]) {
        my ($what, $u) = @$case;
        (my $p = $u) =~ s/\?.*//;
        my $r1 = $t->get($u);
        my $r2 = $t->get($u);
        ok(xc($r1) eq 'MISS' && xc($r2) eq 'MISS' && hits($p) == 2, "$what: never stored")
            or diag(xc($r1) . ' ' . xc($r2) . ' hits ' . hits($p));
    }
    # A request header value longer than 256 bytes (normalised): its variant is not stored.
    my $long = 'a' x 257;
    my $p = '/v/longvalue';
    my $u = "$p?_vary=Accept";
    is(xc($t->get($u, Accept => $long)), 'MISS', 'an Accept of 257 bytes: MISS');
    is(xc($t->get($u, Accept => $long)), 'MISS', 'and again: not stored');
    my $ok = 'a' x 256;
    is(xc($t->get($u, Accept => $ok)), 'MISS', 'an Accept of 256 bytes: MISS');
    is(xc($t->get($u, Accept => $ok)), 'HIT', 'then HIT: stored');
    my $again = $t->get($u, Accept => $long);
    ok(xc($again) eq 'BYPASS' && n_of($again) > 0,
        'once the resource is known to vary, a too long value bypasses the cache')
        or diag(xc($again));

    my @star = $t->log_lines(qr/throttle_cache "vary": responses from \/v\/star are not stored: Vary: \*/, $mark);
    is(scalar @star, 1, 'Vary: * is said once at warn') or diag($t->log_since($mark));
    like($star[0] // '', qr/\[warn\]/, 'at warn');
    is(scalar($t->log_lines(qr/Vary names more than 4 request headers/, $mark)), 1,
        'five headers: said once');
    is(scalar($t->log_lines(qr/longer than 64 bytes/, $mark)), 1, 'a long name: said once');
    is(scalar($t->log_lines(qr/\[warn\].*longvalue/, $mark)), 0,
        'a client\'s long header value is not the operator\'s to fix: no warn');
}

# ------------------------------------------------------------------------------------------
# Vary: Cookie and Authorization

{
    my $mark = $t->log_mark;
    my $p = '/cookie/x';
    my $u = "$p?_vary=Accept,%20Cookie";
    my @r = map { $t->get($u, Cookie => 'sessionid=s1', Accept => 'application/json') } 1 .. 3;
    ok(!grep({ xc($_) ne 'MISS' } @r) && hits($p) == 3,
        'Vary: Cookie under a cookie identity (not verified): never stored')
        or diag(join ' ', map { xc($_) } @r);
    my @lines = $t->log_lines(qr/throttle_cache "cookieid": responses from \/cookie\/x are not stored: Vary: Cookie or Authorization without a verified identity/, $mark);
    is(scalar @lines, 1, 'said once at warn, not three times') or diag($t->log_since($mark));
    like($lines[0] // '', qr/\[warn\]/, 'at warn');
    $t->get('/cookie/y?_vary=Authorization', Cookie => 'sessionid=s1');
    is(scalar($t->log_lines(qr/"cookieid".*without a verified identity/, $mark)), 1,
        'the same reason in the same location: still once');

    # Under a verified identity: Cookie is covered by it, Accept makes variants.
    my $vp = '/verified/x';
    my $vu = "$vp?_vary=Accept,%20Cookie";
    my $a1 = $t->get($vu, 'X-User' => '42', Cookie => 'sessionid=s1', Accept => 'text/html');
    my $a2 = $t->get($vu, 'X-User' => '42', Cookie => 'sessionid=s2', Accept => 'text/html');
    ok(xc($a1) eq 'MISS' && xc($a2) eq 'HIT' && n_of($a2) == n_of($a1),
        'Vary: Accept, Cookie under a verified identity: stored, one user\'s sessions share it')
        or diag(xc($a1) . ' ' . xc($a2));
    my $b1 = $t->get($vu, 'X-User' => '43', Cookie => 'sessionid=s1', Accept => 'text/html');
    ok(xc($b1) eq 'MISS' && n_of($b1) != n_of($a1), 'another user: never the first one\'s entry');
    my $a3 = $t->get($vu, 'X-User' => '42', Accept => 'application/json');
    ok(xc($a3) eq 'MISS' && n_of($a3) != n_of($a1), 'the same user, another Accept: another entry');
    my $auth = $t->get("$vp?_vary=Authorization", 'X-User' => '42', Authorization => 'Bearer t');
    my $auth2 = $t->get("$vp?_vary=Authorization", 'X-User' => '42', Authorization => 'Bearer u');
    ok(xc($auth) eq 'MISS' && xc($auth2) eq 'HIT', 'Vary: Authorization under a verified identity: stored');
}

# Set-Cookie: said once too (the loud configuration covers every reason an operator can fix).
{
    my $mark = $t->log_mark;
    $t->get("/setcookie/$_?_setcookie=a%3Db") for 1 .. 3;
    my @l = $t->log_lines(qr/throttle_cache "loud": responses from \/setcookie\/1 are not stored: they set a cookie/, $mark);
    is(scalar @l, 1, 'Set-Cookie: said once for three refused responses');
    is(scalar($t->log_lines(qr/"loud".*not stored/, $mark)), 1, 'and nothing for the others');
}

# ------------------------------------------------------------------------------------------
# Invalidation and purge reach every variant

{
    my $p = '/user/list';
    my $u = "$p?_vary=Accept";
    my @s = (Cookie => 'sessionid=w1');
    my $j = $t->get($u, @s, Accept => 'application/json');
    my $h = $t->get($u, @s, Accept => 'text/html');
    ok(xc($t->get($u, @s, Accept => 'application/json')) eq 'HIT'
            && xc($t->get($u, @s, Accept => 'text/html')) eq 'HIT', 'two variants stored');
    my $w = $t->request('POST', '/write/x', [@s], 'x=1');
    is($w->{status}, 200, 'the user writes');
    my $j2 = $t->get($u, @s, Accept => 'application/json');
    my $h2 = $t->get($u, @s, Accept => 'text/html');
    ok(xc($j2) eq 'MISS' && xc($h2) eq 'MISS' && n_of($j2) != n_of($j) && n_of($h2) != n_of($h),
        'after the write both variants are gone (MISS, new bodies)')
        or diag(xc($j2) . ' ' . xc($h2));
    ok(xc($t->get($u, @s, Accept => 'application/json')) eq 'HIT', 'and stored again');

    my $pr = $t->request('POST', '/purge?namespace=users');
    is($pr->{status}, 200, 'purge');
    my $j3 = $t->get($u, @s, Accept => 'application/json');
    my $h3 = $t->get($u, @s, Accept => 'text/html');
    ok(xc($j3) eq 'MISS' && xc($h3) eq 'MISS', 'after a purge both variants are gone')
        or diag(xc($j3) . ' ' . xc($h3));

    # Another user never sees this user's variants.
    my $o = $t->get($u, Cookie => 'sessionid=w2', Accept => 'application/json');
    ok(xc($o) eq 'MISS' && n_of($o) != n_of($j3), 'another user: MISS, their own body');
}

$t->done;
