#!/usr/bin/perl
# A zone of the minimum size and many more keys than it holds: least recently used keys are
# evicted, no request ever fails because the zone is full, recent keys stay limited, and
# the full zone is logged once at [alert].

use strict;
use warnings;
use Test::More;
use Throttle::Test;

my $t = Throttle::Test->new->need_fds(600)->write_conf(<<'EOF');
http {
    throttle_zone $http_x_key zone=tiny:32k rate=1r/h;

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096;
        location / { throttle zone=tiny; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%% backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
$t->allow(qr/\[alert\].*"tiny"/)->run;

# 5000 distinct keys, 500 at a time.
my %status;
my $batch = 500;
for my $b (0 .. 9) {
    my @r = $t->concurrent($batch, sub { ['GET', '/', { 'X-Key' => 'key-' . ($b * $batch + $_[0]) }] });
    $status{ $_->{status} }++ for @r;
}
is_deeply(\%status, { 200 => 5000 }, '5000 distinct keys: every first request passes');

# The most recent keys are still in the table and still limited.
my @recent = map { "recent-$_" } 1 .. 20;
my @first = map { $t->get('/', 'X-Key' => $_)->{status} } @recent;
is_deeply(\@first, [(200) x 20], '20 more new keys pass');
my @again = map { $t->get('/', 'X-Key' => $_)->{status} } @recent;
is_deeply(\@again, [(429) x 20], 'the 20 most recent keys are rejected on a second request');

is($t->get('/', 'X-Key' => 'key-0')->{status}, 200,
    'the least recently used key was evicted: it starts afresh');

my @alerts = $t->log_lines(qr/\[alert\]/);
is(scalar @alerts, 1, 'exactly one [alert] line') or diag join "\n", @alerts[0 .. 4];
like($alerts[0] // '', qr/zone "tiny".*(full|evict)|(full|evict).*zone "tiny"/i,
    'it says zone "tiny" is full / evicting');
is(scalar $t->log_lines(qr/\[(crit|emerg)\]/), 0, 'no [crit] or [emerg]');

$t->done;
