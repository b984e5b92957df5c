#!/usr/bin/perl
# GCRA: `burst` requests back to back, then one per emission interval; Retry-After says
# when the next one is admitted, and it is.

use strict;
use warnings;
use Test::More;
use JSON::PP;
use Time::HiRes qw(time sleep);
use Throttle::Test;

my $t = Throttle::Test->new->write_conf(<<'EOF')->run;
http {
    throttle_zone $http_x_key zone=b1:1m  rate=60r/m algorithm=gcra burst=1;
    throttle_zone $http_x_key zone=b5:1m  rate=60r/m algorithm=gcra burst=5;
    throttle_zone $http_x_key zone=def:1m rate=10r/m algorithm=gcra;

    server {
        listen 127.0.0.1:%%PORT%%;
        location /b1/  { throttle zone=b1;  proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /b5/  { throttle zone=b5;  proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /def/ { throttle zone=def; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF

sub remaining { ($_[0]{headers}{ratelimit} // '') =~ /^"[^"]+";r=(\d+);t=\d+$/ ? $1 : undef }

# --- burst=1: one request, then one per second
my $t0 = time;
my $r = $t->get('/b1/', 'X-Key' => 'a');
my $t1 = time;    # the first was decided between $t0 and $t1
is($r->{status}, 200, 'burst=1: first passes');
like($r->{headers}{'ratelimit-policy'} // '', qr/^"b1";q=\d+;w=\d+$/, 'burst=1: RateLimit-Policy');
is(remaining($r), 0, 'burst=1: r=0');
$r = $t->get('/b1/', 'X-Key' => 'a');
is($r->{status}, 429, 'burst=1: second immediate request rejected');
is($r->{headers}{'retry-after'}, 1, 'burst=1: Retry-After 1');
is(eval { decode_json($r->{body})->{retry_after} }, 1, 'burst=1: body retry_after 1');

# Rejections consume nothing: poll until admitted; that is one second after the first. Each poll
# is decided after it was sent and before its answer came back, so whatever the load: the
# admitted one is answered at least 1 s after $t0, and no poll sent later than 1 s after $t1
# is rejected (a poll sent then can only be decided later).
my $n = 0;
my $last_rejected = $t1;    # when the last rejected poll was sent
do {
    $n++;
    sleep 0.05;
    my $sent = time;
    $r = $t->get('/b1/', 'X-Key' => 'a');
    $last_rejected = $sent if $r->{status} == 429;
} while $r->{status} == 429 && time - $t0 < 10;
my $waited = time - $t0;
is($r->{status}, 200, "burst=1: admitted again after polling ($n requests)");
ok($waited > 0.9, sprintf('burst=1: not admitted before 1 s (answered %.2fs after the first was sent)', $waited));
ok($last_rejected - $t1 < 1.05, sprintf('burst=1: admitted once 1 s had passed (last rejected poll sent '
    . '%.2fs after the first was answered)', $last_rejected - $t1));

# --- burst=5: five back to back, then rejected
my @r = map { $t->get('/b5/', 'X-Key' => 'a') } 1 .. 6;
is_deeply([map { $_->{status} } @r], [200, 200, 200, 200, 200, 429], 'burst=5: 5 pass, 6th rejected');
is_deeply([map { remaining($_) } @r[0 .. 4]], [4, 3, 2, 1, 0], 'burst=5: r counts down 4..0');
is($r[5]{headers}{'retry-after'}, 1, 'burst=5: Retry-After 1');
is(eval { decode_json($r[5]{body})->{zone} }, 'b5', 'burst=5: body names the zone');
is($t->get('/b5/', 'X-Key' => 'b')->{status}, 200, 'burst=5: another key has its own bucket');

# --- default burst = N
@r = map { $t->get('/def/', 'X-Key' => 'a')->{status} } 1 .. 11;
is_deeply(\@r, [(200) x 10, 429], 'default burst: 10 of 10r/m back to back, then rejected');

$t->done;
