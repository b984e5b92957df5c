#!/usr/bin/perl
# Bad configuration fails `nginx -t` with an nginx-style message: lowercase, the value
# quoted, no final period, pointing at the offending line. A good one passes.

use strict;
use warnings;
use Test::More;
use Throttle::Test;

my $t = Throttle::Test->new;

# [name, http-level lines, location lines, expected message]
my $zone = 'throttle_zone $binary_remote_addr';
my @cases = (
    ['unknown parameter',      "$zone zone=a:1m rate=1r/s foo=bar;", '',
        qr/invalid parameter "foo=bar"/],
    ['missing zone',           "$zone rate=1r/s;", '',
        qr/"throttle_zone" must have "zone" parameter/],
    ['missing rate',           "$zone zone=a:1m;", '',
        qr/"throttle_zone" must have "rate" parameter/],
    ['bad size',               "$zone zone=a:abc rate=1r/s;", '',
        qr/invalid zone size "zone=a:abc"/],
    ['no size',                "$zone zone=a rate=1r/s;", '',
        qr/invalid zone size "zone=a"/],
    ['no name',                "$zone zone=:1m rate=1r/s;", '',
        qr/invalid zone name "zone=:1m"/],
    ['zone too small',         "$zone zone=a:1k rate=1r/s;", '',
        qr/zone "a" is too small/],
    ['unknown unit',           "$zone zone=a:1m rate=100r/x;", '',
        qr/invalid rate "rate=100r\/x"/],
    ['zero rate',              "$zone zone=a:1m rate=0r/s;", '',
        qr/invalid rate "rate=0r\/s"/],
    ['rate without r',         "$zone zone=a:1m rate=100/h;", '',
        qr/invalid rate "rate=100\/h"/],
    ['rate not a number',      "$zone zone=a:1m rate=abc;", '',
        qr/invalid rate "rate=abc"/],
    ['negative rate',          "$zone zone=a:1m rate=-1r/s;", '',
        qr/invalid rate "rate=-1r\/s"/],
    ['rate overflow',          "$zone zone=a:1m rate=99999999999999999999999r/s;", '',
        qr/invalid rate "rate=99999999999999999999999r\/s"/],
    ['unknown algorithm',      "$zone zone=a:1m rate=1r/s algorithm=leaky;", '',
        qr/invalid algorithm "algorithm=leaky"/],
    ['burst with sliding',     "$zone zone=a:1m rate=1r/s burst=5;", '',
        qr/"burst" requires "algorithm=gcra"/],
    ['burst with explicit sliding', "$zone zone=a:1m rate=1r/s algorithm=sliding burst=5;", '',
        qr/"burst" requires "algorithm=gcra"/],
    ['burst=0',                "$zone zone=a:1m rate=1r/s algorithm=gcra burst=0;", '',
        qr/invalid burst "burst=0"/],
    ['burst=abc',              "$zone zone=a:1m rate=1r/s algorithm=gcra burst=abc;", '',
        qr/invalid burst "burst=abc"/],
    ['empty key',              'throttle_zone "" zone=a:1m rate=1r/s;', '',
        qr/invalid key ""/],
    ['duplicate zone name',    "$zone zone=a:1m rate=1r/s;\n    $zone zone=a:2m rate=2r/s;", '',
        qr/duplicate zone "a"/],
    ['unknown zone in throttle', "$zone zone=a:1m rate=1r/s;", 'throttle zone=nope;',
        qr/unknown throttle_zone "nope"/],
    ['throttle twice in a location', "$zone zone=a:1m rate=1r/s;", 'throttle zone=a; throttle zone=a;',
        qr/"throttle" directive is duplicate/],
    ['throttle unknown parameter', "$zone zone=a:1m rate=1r/s;", 'throttle foo=bar;',
        qr/invalid parameter "foo=bar"/],
    ['throttle without arguments', "$zone zone=a:1m rate=1r/s;", 'throttle;',
        qr/invalid number of arguments in "throttle" directive/],
    ['throttle_status 200',    '', 'throttle_status 200;',
        qr/value must be between 400 and 599/],
    ['throttle_status 600',    '', 'throttle_status 600;',
        qr/value must be between 400 and 599/],
    ['throttle_dry_run maybe', '', 'throttle_dry_run maybe;',
        qr/invalid value "maybe" in "throttle_dry_run" directive/],
    ['throttle_headers maybe', '', 'throttle_headers maybe;',
        qr/invalid value "maybe" in "throttle_headers" directive/],
    ['throttle_log_level bogus', '', 'throttle_log_level bogus;',
        qr/invalid value "bogus"/],
    ['throttle_zone in a location', '', "$zone zone=a:1m rate=1r/s;",
        qr/"throttle_zone" directive is not allowed here/],
    # A parameter given twice is refused (it used to be: the last one won).
    ['two rates',              "$zone zone=a:1m rate=1r/s rate=2r/s;", '',
        qr/"rate" is duplicate/],
    ['two zones',              "$zone zone=a:1m zone=b:1m rate=1r/s;", '',
        qr/"zone" is duplicate/],
    ['two algorithms',         "$zone zone=a:1m rate=1r/s algorithm=gcra algorithm=sliding;", '',
        qr/"algorithm" is duplicate/],
    ['two bursts',             "$zone zone=a:1m rate=1r/s algorithm=gcra burst=2 burst=3;", '',
        qr/"burst" is duplicate/],
    ['parameter without a value', "$zone zone=a:1m rate=1r/s burst;", '',
        qr/invalid parameter "burst"/],
    ['throttle zone=',         "$zone zone=a:1m rate=1r/s;", 'throttle zone=;',
        qr/invalid parameter "zone="/],
);

sub conf {
    my ($http, $loc) = @_;
    return <<"EOF";
http {
    $http
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            $loc
        }
    }
}
EOF
}

for my $c (@cases) {
    my ($name, $http, $loc, $want) = @$c;
    my ($ok, $out) = $t->nginx_t(conf($http, $loc));
    ok(!$ok, "$name: nginx -t fails");
    my ($line) = grep { /\[emerg\]/ } split /\n/, $out;
    like($line // $out, $want, "$name: message");
    my ($msg, $file, $no) = ($line // '') =~ /\[emerg\] (.*) in (\S+):(\d+)$/;
    ok(defined $msg && $msg =~ /^["a-z]/ && $msg !~ /\.$/,
        "$name: lowercase, no final period") or diag $out;
    my $at = $file ? (split /\n/, $t->read_file($file))[$no - 1] // '' : '';
    like($at, qr/^\s*throttle/, "$name: points at the offending line ($no)");
}

# Every directive, in every context it is allowed in.
my ($ok, $out) = $t->nginx_t(<<'EOF');
http {
    throttle_zone $binary_remote_addr zone=a:1m rate=10r/s;
    throttle_zone $http_x_key         zone=b:32k rate=1000000r/d algorithm=gcra burst=50;
    throttle_zone "$host$uri"         zone=c:1m rate=5r/m algorithm=sliding;
    throttle_zone $cookie_x           zone=d:1m rate=1r/h algorithm=gcra;
    throttle zone=a;
    throttle_status 503;
    throttle_dry_run off;
    throttle_headers on;
    throttle_log_level warn;

    server {
        listen 127.0.0.1:%%PORT%%;
        throttle zone=b;
        throttle zone=c;
        throttle_status 429;
        throttle_dry_run on;
        throttle_headers off;
        throttle_log_level notice;
        location / {
            throttle zone=a; throttle zone=b; throttle zone=c; throttle zone=d;
            throttle_status 599;
            throttle_dry_run off;
            throttle_headers on;
            throttle_log_level info;
        }
        location /x/ { throttle_status 400; throttle_log_level error; }
    }
}
EOF
ok($ok, 'a good config passes nginx -t') or diag $out;
like($out, qr/syntax is ok/, 'syntax is ok');

$t->done;
