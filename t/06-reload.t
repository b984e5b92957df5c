#!/usr/bin/perl
# nginx -s reload: a zone with the same name, size and key keeps its counts; a zone whose
# key changed is refused like limit_req refuses it, and the old configuration keeps serving
# with its counts; a zone whose size changed starts empty (as limit_req's does).

use strict;
use warnings;
use Test::More;
use Throttle::Test;

my $conf = <<'EOF';
http {
    throttle_zone $binary_remote_addr zone=r:1m rate=5r/h;
    throttle_zone $http_x_key         zone=sz:1m rate=1r/h;

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Gen GEN always;
        location /     { throttle zone=r;  proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /sz/  { throttle zone=sz; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF
sub gen { my ($n) = @_; $conf =~ s/GEN/$n/r }

my $t = Throttle::Test->new->write_conf(gen(1))->run;

sub remaining { ($_[0]{headers}{ratelimit} // '') =~ /;r=(\d+);/ ? $1 : undef }

for my $i (1 .. 3) {
    my $r = $t->get('/');
    is($r->{status}, 200, "before reload: $i passes");
}

# --- same zone: counts kept
ok($t->write_conf(gen(2))->reload, 'reload with the same zones');
my $r = $t->get('/');
is($r->{headers}{'x-gen'}, 2, 'the new configuration serves');
is($r->{status}, 200, 'after reload: 4 passes');
is(remaining($r), 1, 'after reload: r=1 (3 counted before the reload)');
is($t->get('/')->{status}, 200, 'after reload: 5 passes');
$r = $t->get('/');
is($r->{status}, 429, 'after reload: 6 rejected');

# --- a second reload in a row
ok($t->write_conf(gen(3))->reload, 'second reload');
is($t->get('/')->{status}, 429, 'still rejected after a second reload');

# --- key changed: refused, old configuration and counts stay
$t->allow(qr/\[emerg\].*throttle_zone "r" uses the "\$remote_addr" key while previously it used the "\$binary_remote_addr" key/);
my $mark = $t->log_mark;
(my $changed = gen(4)) =~ s/throttle_zone \$binary_remote_addr zone=r:/throttle_zone \$remote_addr zone=r:/;
ok(!$t->write_conf($changed)->reload, 'reload with a changed key is refused');
my @emerg = $t->log_lines(qr/\[emerg\]/, $mark);
is(scalar @emerg, 1, 'one [emerg] line');
like($emerg[0] // '',
    qr/throttle_zone "r" uses the "\$remote_addr" key while previously it used the "\$binary_remote_addr" key/,
    'the message names the zone and both keys');
unlike($emerg[0] // '', qr/\.\s*$/, 'no final period');
$r = $t->get('/');
is($r->{headers}{'x-gen'}, 3, 'the old configuration still serves');
is($r->{status}, 429, 'and its counts remain');

ok($t->write_conf(gen(5))->reload, 'reload with the original key again');
$r = $t->get('/');
is($r->{headers}{'x-gen'}, 5, 'generation 5 serves');
is($r->{status}, 429, 'counts still remain');

# --- rate raised, same key and size: counts kept, the new rate applies
(my $raised = gen(6)) =~ s/zone=r:1m rate=5r\/h/zone=r:1m rate=7r\/h/;
ok($t->write_conf($raised)->reload, 'reload with a higher rate');
$r = $t->get('/');
is($r->{status}, 200, 'higher rate: 6th request of the hour passes');
is($r->{headers}{'ratelimit-policy'}, '"r";q=7;w=3600', 'higher rate: new policy');
is(remaining($r), 1, 'higher rate: r=1 (5 kept + this one)');
is($t->get('/')->{status}, 200, 'higher rate: 7th passes');
is($t->get('/')->{status}, 429, 'higher rate: 8th rejected');

# --- size changed: a new, empty zone (like limit_req)
is($t->get('/sz/', 'X-Key' => 'a')->{status}, 200, 'zone sz: a passes');
is($t->get('/sz/', 'X-Key' => 'a')->{status}, 429, 'zone sz: a rejected');
(my $resized = $raised) =~ s/zone=sz:1m/zone=sz:2m/;
ok($t->write_conf($resized)->reload, 'reload with a resized zone');
is($t->get('/sz/', 'X-Key' => 'a')->{status}, 200, 'resized zone starts empty: a passes');
is($t->get('/sz/', 'X-Key' => 'a')->{status}, 429, 'resized zone: a rejected');
is($t->get('/')->{status}, 429, 'the unchanged zone r kept its counts');

$t->done;
