#!/usr/bin/perl
# The forms a zone's key takes: one variable (read by its index, without the script engine),
# and everything else (evaluated as a complex value): "${name}", two variables with text
# between them, a variable inside text. Each form must count the same client key in the same
# bucket, other keys in their own, and skip the zone for an empty key, with the same RateLimit
# fields.

use strict;
use warnings;
use Test::More;
use Throttle::Test;

my $t = Throttle::Test->new->write_conf(<<'EOF')->run;
http {
    throttle_zone $http_x_key           zone=one:1m    rate=2r/m;
    throttle_zone ${http_x_key}         zone=braced:1m rate=2r/m;
    throttle_zone $http_x_a:$http_x_b   zone=two:1m    rate=2r/m;
    throttle_zone k-${http_x_key}-k     zone=text:1m   rate=2r/m;
    throttle_zone $HTTP_X_KEY           zone=upper:1m  rate=2r/m;

    server {
        listen 127.0.0.1:%%PORT%%;
        location /one/    { throttle zone=one;    empty_gif; }
        location /braced/ { throttle zone=braced; empty_gif; }
        location /two/    { throttle zone=two;    empty_gif; }
        location /text/   { throttle zone=text;   empty_gif; }
        location /upper/  { throttle zone=upper;  empty_gif; }
    }
}
EOF

# Requests of one key until 429: 2 pass with r=1 then r=0, the third is rejected.
sub two_then_429 {
    my ($zone, $path, %h) = @_;
    for my $left (1, 0) {
        my $r = $t->get($path, %h);
        is($r->{status}, 200, "$zone: a request passes");
        like($r->{headers}{ratelimit} // '', qr/^"\Q$zone\E";r=$left;t=\d+$/, "$zone: r=$left");
        is($r->{headers}{'ratelimit-policy'}, "\"$zone\";q=2;w=60", "$zone: RateLimit-Policy");
    }
    is($t->get($path, %h)->{status}, 429, "$zone: the third request of the key is rejected");
}

for my $z (qw(one braced upper text)) {
    two_then_429($z, "/$z/", 'X-Key' => 'alice');
    is($t->get("/$z/", 'X-Key' => 'bob')->{status}, 200, "$z: another key has its own bucket");
}
# an empty key: one, braced and upper skip the zone (no fields); text's key is never empty
for my $z (qw(one braced upper)) {
    my $r = $t->get("/$z/");
    is($r->{status}, 200, "$z: no key: passes");
    ok(!defined $r->{headers}{ratelimit}, "$z: no key: the zone did not apply");
}
my $r = $t->get('/text/');
is($r->{status}, 200, 'text: a request without X-Key passes (its key "k--k")');
like($r->{headers}{ratelimit} // '', qr/^"text";r=1;/, 'text: and is counted under "k--k"');

two_then_429('two', '/two/', 'X-A' => 'x', 'X-B' => 'y');
is($t->get('/two/', 'X-A' => 'x', 'X-B' => 'z')->{status}, 200, 'two: x:z is another key');
is($t->get('/two/', 'X-A' => 'x:y')->{status}, 200, 'two: "x:y:" is another key');

$t->done;
