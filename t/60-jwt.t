#!/usr/bin/perl
# throttle_jwt: a verified identity from a JWT. Tokens are made here, at test time: HS256 with
# Digest::SHA, RS256 and ES256 with the openssl command line (ES256's DER signature turned into
# JOSE's r || s). A zone keyed on $throttle_jwt_claim_user_id: two tokens of one user share the
# quota; an invalid token gives an empty key (the zone skips it); $throttle_jwt_status says why.
# Bad configurations fail nginx -t.

use strict;
use warnings;
use Test::More;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64url decode_base64);
use Throttle::Test;

system('openssl version >/dev/null 2>&1') == 0 or plan skip_all => 'no openssl command';

my $t = Throttle::Test->new;
my $dir = $t->testdir;
my $secret = 'test-secret-0123456789-abcdefghijklmnop';
$t->write_file('secret', "$secret\n");
$t->write_file('short', "short\n");
$t->write_file('empty', "\n");
$ENV{THROTTLE_TEST_JWT_SECRET} = $secret;

sub openssl {
    my $cmd = join ' ', 'openssl', @_;
    my $out = `$cmd 2>&1`;
    die "$cmd: $out" if $?;
    return $out;
}
openssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out $dir/rsa.pem");
openssl("pkey -in $dir/rsa.pem -pubout -out $dir/rsa.pub");
openssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $dir/ec.pem");
openssl("pkey -in $dir/ec.pem -pubout -out $dir/ec.pub");
openssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $dir/ec2.pem");

# The JWKS: the EC key's x and y are the last 64 bytes of its DER SubjectPublicKeyInfo.
openssl("pkey -pubin -in $dir/ec.pub -outform DER -out $dir/ec.der");
my $der = $t->read_file('ec.der');
my ($x, $y) = (substr($der, -64, 32), substr($der, -32));
$t->write_file('jwks.json', sprintf('{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","use":"sig",'
    . '"x":"%s","y":"%s"}]}', encode_base64url($x), encode_base64url($y)));

sub json {
    my ($h) = @_;
    return '{' . join(',', map {
        my $v = $h->{$_};
        qq("$_":) . (ref $v eq 'ARRAY' ? '[' . join(',', map { qq("$_") } @$v) . ']'
            : $v =~ /^-?\d+$/ ? $v : qq("$v"))
    } sort keys %$h) . '}';
}

sub input { my ($h, $p) = @_; encode_base64url(json($h)) . '.' . encode_base64url(json($p)) }

sub hs256 {
    my ($payload, %o) = @_;
    my $in = input({alg => $o{alg} // 'HS256', typ => 'JWT'}, $payload);
    return "$in." . encode_base64url(hmac_sha256($in, $o{secret} // $secret));
}

# ES256: openssl's DER ECDSA-Sig-Value (SEQUENCE { INTEGER r, INTEGER s }) to r || s.
sub der_to_rs {
    my ($sig) = @_;
    my @b = unpack 'C*', $sig;
    my $i = 2;
    $i++ if $b[1] & 0x80;    # never for P-256, but be exact
    my @int;
    for (1 .. 2) {
        die 'not an INTEGER' unless $b[$i] == 0x02;
        my $len = $b[$i + 1];
        my $v = substr($sig, $i + 2, $len);
        $v =~ s/^\x00+//;
        push @int, ("\x00" x (32 - length $v)) . $v;
        $i += 2 + $len;
    }
    return join '', @int;
}

sub signed {
    my ($key, $alg, $payload, %h) = @_;
    my $in = input({alg => $alg, %h}, $payload);
    $t->write_file('input', $in);
    openssl("dgst -sha256 -sign $dir/$key -out $dir/sig $dir/input");
    my $sig = $t->read_file('sig');
    $sig = der_to_rs($sig) if $alg eq 'ES256';
    return "$in." . encode_base64url($sig);
}

$t->write_conf(<<'EOF')->run;
env THROTTLE_TEST_JWT_SECRET;

http {
    throttle_zone $throttle_jwt_claim_user_id zone=user:1m rate=3r/m;

    large_client_header_buffers 4 32k;
    log_format jwt "$request_uri [$throttle_jwt_status] [$throttle_jwt_claim_user_id]";

    server {
        listen 127.0.0.1:%%PORT%%;
        access_log %%TESTDIR%%/jwt.log jwt;
        add_header X-Jwt "[$throttle_jwt_status] [$throttle_jwt_claim_user_id] [$throttle_jwt_claim_name]" always;

        throttle_jwt key=hs:file:%%TESTDIR%%/secret alg=HS256 leeway=30s iss=auth aud=api;

        location /api/ { throttle zone=user; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /echo/ { proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /rs/ { throttle_jwt key=pem:%%TESTDIR%%/rsa.pub; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /es/ { throttle_jwt jwks=%%TESTDIR%%/jwks.json alg=ES256; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /cookie/ { throttle_jwt key=hs:file:%%TESTDIR%%/secret cookie=jwt; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /header/ { throttle_jwt key=hs:file:%%TESTDIR%%/secret header=X-Token; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /env/ { throttle_jwt key=hs:env:THROTTLE_TEST_JWT_SECRET; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /off/ { throttle_jwt off; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        access_log off;
        location / { return 200 "ok\n"; }
    }
}
EOF

my $now = time;
my %good = (iss => 'auth', aud => 'api', exp => $now + 3600);

sub jwt_of {
    my ($path, @h) = @_;
    my $r = $t->get($path, @h);
    return [$r->{status}, $r->{headers}{'x-jwt'}];
}
sub bearer { ('Authorization' => "Bearer $_[0]") }

# valid tokens
my $u7a = hs256({%good, user_id => 7, name => 'ann', jti => 'a'});
my $u7b = hs256({%good, user_id => 7, name => 'ann', jti => 'b'});
my $u8 = hs256({%good, user_id => 8, name => 'bob'});
is_deeply(jwt_of('/echo/1', bearer($u7a)), [200, '[valid] [7] [ann]'], 'HS256: valid, claims');
is_deeply(jwt_of('/echo/2', bearer($u7a)), [200, '[valid] [7] [ann]'],
    'the same token again (the worker cache): valid');
is_deeply(jwt_of('/echo/3', 'Authorization' => "bearer  $u8"), [200, '[valid] [8] [bob]'],
    'the scheme is case-insensitive');

# one user, two tokens: one quota (3 per minute)
is(jwt_of('/api/1', bearer($u7a))->[0], 200, 'user 7, token a: 1st');
is(jwt_of('/api/2', bearer($u7b))->[0], 200, 'user 7, token b: 2nd');
is(jwt_of('/api/3', bearer($u7a))->[0], 200, 'user 7, token a: 3rd');
is(jwt_of('/api/4', bearer($u7b))->[0], 429, 'user 7, token b: 4th is rejected (shared quota)');
is(jwt_of('/api/5', bearer($u8))->[0], 200, 'user 8 has a quota of its own');

# invalid tokens: empty identity, the zone skips them, the status says why
my %bad = (
    bad_signature => hs256({%good, user_id => 7}, secret => 'another-secret-0123456789-abcdefghijk'),
    expired       => hs256({%good, user_id => 7, exp => $now - 100}),
    not_yet_valid => hs256({%good, user_id => 7, nbf => $now + 100}),
    bad_issuer    => hs256({%good, user_id => 7, iss => 'evil'}),
    bad_audience  => hs256({%good, user_id => 7, aud => ['web', 'app']}),
    unsupported_alg => hs256({%good, user_id => 7}, alg => 'HS512'),
    malformed     => 'abc.def.ghi',
);
for my $why (sort keys %bad) {
    my @r = map { jwt_of("/api/$why/$_", bearer($bad{$why})) } 1 .. 5;
    is_deeply([map { $_->[0] } @r], [(200) x 5], "$why: never limited (empty key)");
    is($r[0][1], "[$why] [] []", "$why: status, no claims");
}
# alg none, unsigned
my $none = input({alg => 'none'}, {%good, user_id => 7}) . '.';
is(jwt_of('/echo/none', bearer($none))->[1], '[malformed] [] []', 'alg none: refused');
my $none_sig = input({alg => 'none'}, {%good, user_id => 7}) . '.AAAA';
is(jwt_of('/echo/none2', bearer($none_sig))->[1], '[unsupported_alg] [] []',
    'alg none with a signature: refused');
# tampered payload: user 7's signature on user 9's claims
my ($h7, undef, $s7) = split /\./, $u7a;
my (undef, $p9) = split /\./, hs256({%good, user_id => 9});
is(jwt_of('/echo/tampered', bearer("$h7.$p9.$s7"))->[1], '[bad_signature] [] []',
    'tampered payload: bad_signature');
is(jwt_of('/echo/aud', bearer(hs256({%good, user_id => 5, aud => ['web', 'api']})))->[1],
    '[valid] [5] []', 'aud array containing "api": valid');
is(jwt_of('/echo/leeway', bearer(hs256({%good, user_id => 6, exp => $now - 5})))->[1],
    '[valid] [6] []', 'expired 5s ago, within the 30s leeway: valid');

# no token
is(jwt_of('/echo/none3')->[1], '[missing] [] []', 'no Authorization: missing');
is(jwt_of('/echo/basic', 'Authorization' => 'Basic dXNlcjpwYXNz')->[1], '[missing] [] []',
    'Basic credentials: missing');
is(jwt_of('/off/x', bearer($u7a))->[1], '[] [] []', 'throttle_jwt off: empty');
my $huge = hs256({%good, user_id => 7, pad => 'x' x 9000});
is(jwt_of('/echo/huge', bearer($huge))->[1], '[malformed] [] []', 'a 12 KB token: malformed');

# RS256 with a PEM key, and the algorithm confusion attack against it
my $rs = signed('rsa.pem', 'RS256', {user_id => 11});
is(jwt_of('/rs/1', bearer($rs))->[1], '[valid] [11] []', 'RS256 with a PEM key: valid');
my $pub = $t->read_file('rsa.pub');
is(jwt_of('/rs/2', bearer(hs256({user_id => 12}, secret => $pub)))->[1],
    '[unsupported_alg] [] []', 'HS256 signed with the RSA public key as secret: refused');
my $rs_other = signed('ec.pem', 'ES256', {user_id => 11});
is(jwt_of('/rs/3', bearer($rs_other))->[1], '[unsupported_alg] [] []',
    'ES256 against an RSA key: refused');

# ES256 from a JWKS, selected by kid
is(jwt_of('/es/1', bearer(signed('ec.pem', 'ES256', {user_id => 21}, kid => 'k1')))->[1],
    '[valid] [21] []', 'ES256 from the JWKS: valid');
is(jwt_of('/es/2', bearer(signed('ec.pem', 'ES256', {user_id => 21})))->[1],
    '[valid] [21] []', 'ES256 without kid: valid');
is(jwt_of('/es/3', bearer(signed('ec.pem', 'ES256', {user_id => 21}, kid => 'k2')))->[1],
    '[unknown_kid] [] []', 'a kid not in the set: unknown_kid');
is(jwt_of('/es/4', bearer(signed('ec2.pem', 'ES256', {user_id => 21}, kid => 'k1')))->[1],
    '[bad_signature] [] []', 'signed by another EC key: bad_signature');
is(jwt_of('/es/5', bearer(signed('rsa.pem', 'RS256', {user_id => 21})))->[1],
    '[unsupported_alg] [] []', 'RS256 where alg=ES256: unsupported_alg');

# other sources
my $u30 = hs256({user_id => 30});
is(jwt_of('/cookie/1', 'Cookie' => "a=b; jwt=$u30; c=d")->[1], '[valid] [30] []',
    'cookie=jwt: valid');
is(jwt_of('/cookie/2', bearer($u30))->[1], '[missing] [] []',
    'cookie=jwt: the Authorization header is not read');
is(jwt_of('/header/1', 'X-Token' => $u30)->[1], '[valid] [30] []', 'header=X-Token: valid');
is(jwt_of('/env/1', bearer($u30))->[1], '[valid] [30] []', 'key=hs:env: valid');

# the same after a reload: the env secret is kept by `env NAME;`
ok($t->reload, 'reload');
is(jwt_of('/env/2', bearer($u30))->[1], '[valid] [30] []', 'key=hs:env after a reload: valid');

# the access log sees the same values
my %log = map { /^(\S+) (.*)$/ ? ($1, $2) : () } split /\n/, $t->read_file('jwt.log');
# nginx logs a variable that is "not found" as "-"
s/\[-\]/[]/g for values %log;
is($log{'/api/4'}, '[valid] [7]', 'access log: a rejected request of user 7');
is($log{'/api/expired/1'}, '[expired] []', 'access log: expired');
is($log{'/echo/none3'}, '[missing] []', 'access log: missing');

# bad configurations
my $hs = "key=hs:file:$dir/secret";
my @cases = (
    ['no key', 'throttle_jwt alg=HS256;', qr/"throttle_jwt" must have "key" or "jwks" parameter/],
    ['unknown key kind', 'throttle_jwt key=rsa:/x;', qr/invalid key "key=rsa:\/x"/],
    ['missing file', "throttle_jwt key=hs:file:$dir/nope;", qr/open\(\) "[^"]*nope" failed/],
    ['empty secret', "throttle_jwt key=hs:file:$dir/empty;", qr/empty secret in "key=hs:file:[^"]*empty"/],
    ['short secret', "throttle_jwt key=hs:file:$dir/short;", qr/secret in "key=hs:file:[^"]*short" is too short: 5 bytes, at least 32/],
    ['unset env', 'throttle_jwt key=hs:env:THROTTLE_TEST_NO_SUCH_VAR;',
        qr/environment variable in "key=hs:env:THROTTLE_TEST_NO_SUCH_VAR" is not set \(and "env THROTTLE_TEST_NO_SUCH_VAR;" keeps it across a binary upgrade\)/],
    ['secret as a PEM', "throttle_jwt key=pem:$dir/secret;", qr/invalid key "key=pem:[^"]*secret": no PEM public key/],
    ['private key file', "throttle_jwt key=pem:$dir/jwks.json;", qr/invalid key "key=pem:[^"]*": no PEM public key/],
    ['bad jwks', "throttle_jwt jwks=$dir/secret;", qr/invalid jwks "jwks=[^"]*secret": not a JSON object/],
    ['unknown alg', "throttle_jwt $hs alg=HS256,none;", qr/invalid alg "alg=HS256,none"/],
    ['alg the key cannot do', "throttle_jwt $hs alg=HS256,RS256;", qr/"alg=HS256,RS256": the key cannot verify "RS256"/],
    ['HS for a PEM key', "throttle_jwt key=pem:$dir/rsa.pub alg=HS256;", qr/"alg=HS256": the key cannot verify "HS256"/],
    ['bad leeway', "throttle_jwt $hs leeway=soon;", qr/invalid leeway "leeway=soon"/],
    ['key and jwks', "throttle_jwt $hs jwks=$dir/jwks.json;", qr/"key" and "jwks" are exclusive/],
    ['header and cookie', "throttle_jwt $hs header=X-T cookie=c;", qr/"header" and "cookie" are exclusive/],
    ['bad header name', "throttle_jwt $hs header=X:T;", qr/invalid header name "header=X:T"/],
    ['empty iss', "throttle_jwt $hs iss=;", qr/invalid iss "iss="/],
    ['unknown parameter', "throttle_jwt $hs foo=bar;", qr/invalid parameter "foo=bar"/],
    ['two keys', "throttle_jwt $hs $hs;", qr/"key" is duplicate/],
    ['twice', "throttle_jwt $hs; throttle_jwt $hs;", qr/"throttle_jwt" directive is duplicate/],
);
for my $c (@cases) {
    my ($name, $line, $want) = @$c;
    my ($ok, $out) = $t->nginx_t(<<"EOF");
http {
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            $line
        }
    }
}
EOF
    ok(!$ok, "$name: nginx -t fails");
    my ($emerg) = grep { /\[emerg\]/ } split /\n/, $out;
    like($emerg // $out, $want, "$name: message");
    ok(($emerg // '') =~ /\[emerg\] (?:\S+: )?["a-z][^\n]*[^.] in \S+:\d+$/, "$name: nginx style")
        or diag $out;
}
my ($ok, $out) = $t->nginx_t(<<"EOF");
http {
    throttle_jwt $hs;
    server {
        listen 127.0.0.1:%%PORT%%;
        throttle_jwt jwks=$dir/jwks.json alg=ES256 leeway=1m iss=a aud=b cache=0;
        location / { throttle_jwt key=pem:$dir/ec.pub cookie=token cache=10; }
        location /x/ { throttle_jwt off; }
    }
}
EOF
ok($ok, 'every parameter in every context passes nginx -t') or diag $out;

$t->done;
