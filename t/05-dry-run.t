#!/usr/bin/perl
# throttle_dry_run: a request over the limit passes, is marked REJECTED_DRY_RUN and logged
# as a dry run. throttle_log_level: the rejection line's level.

use strict;
use warnings;
use Test::More;
use Throttle::Test;

my $t = Throttle::Test->new->write_conf(<<'EOF')->run;
http {
    throttle_zone $http_x_key zone=dry:1m rate=2r/h;
    throttle_zone $http_x_key zone=lvl:1m rate=1r/h;

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Status "[$throttle_status]" always;
        add_header X-Remaining "[$throttle_remaining]" always;

        location /dry/  { throttle zone=dry; throttle_dry_run on; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /real/ { throttle zone=dry; proxy_pass http://127.0.0.1:%%PORT_2%%; }

        location /default/ { throttle zone=lvl; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /info/    { throttle zone=lvl; throttle_log_level info;   proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /notice/  { throttle zone=lvl; throttle_log_level notice; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /warn/    { throttle zone=lvl; throttle_log_level warn;   proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /error/   { throttle zone=lvl; throttle_log_level error;  proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /drywarn/ { throttle zone=lvl; throttle_log_level warn; throttle_dry_run on;
                             proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "backend\n"; }
    }
}
EOF

# --- dry run
my @r = map { $t->get('/dry/', 'X-Key' => 'a') } 1 .. 2;
is_deeply([map { $_->{status} } @r], [200, 200], 'dry run: within the limit');
is_deeply([map { $_->{headers}{'x-status'} } @r], ['[PASSED]', '[PASSED]'], 'dry run: PASSED');
is_deeply([map { $_->{headers}{'x-remaining'} } @r], ['[1]', '[0]'], 'dry run: remaining 1, 0');

my $mark = $t->log_mark;
my $r = $t->get('/dry/', 'X-Key' => 'a');
is($r->{status}, 200, 'dry run: over the limit, still passes');
is($r->{body}, "backend\n", 'dry run: the backend answered');
is($r->{headers}{'x-status'}, '[REJECTED_DRY_RUN]', 'dry run: $throttle_status REJECTED_DRY_RUN');
is($r->{headers}{'x-remaining'}, '[0]', 'dry run: $throttle_remaining 0');
my @lines = $t->log_lines(qr/limiting request/, $mark);
is(scalar @lines, 1, 'dry run: one log line');
like($lines[0] // '', qr/\[error\].*limiting request.*dry run.*zone "dry"|\[error\].*limiting request.*zone "dry".*dry run/,
    'dry run: the line says dry run and names the zone');

$r = $t->get('/real/', 'X-Key' => 'a');
is($r->{status}, 429, 'the same zone without dry run rejects');
is($r->{headers}{'x-status'}, '[REJECTED]', '$throttle_status REJECTED');
is($r->{headers}{'x-remaining'}, '[0]', '$throttle_remaining 0 on reject');
@lines = $t->log_lines(qr/limiting request/, $mark);
is(scalar @lines, 2, 'one more line');
unlike($lines[1] // '', qr/dry run/, 'a real rejection is not logged as dry run');

# --- log levels: key "k-<level>" gets one pass (1r/h), then a rejection
for my $level (qw(default info notice warn error)) {
    my $want = $level eq 'default' ? 'error' : $level;
    my $key = "k-$level";
    is($t->get("/$level/", 'X-Key' => $key)->{status}, 200, "$level: first passes");
    $mark = $t->log_mark;
    is($t->get("/$level/", 'X-Key' => $key)->{status}, 429, "$level: second rejected");
    @lines = $t->log_lines(qr/limiting request/, $mark);
    is(scalar @lines, 1, "$level: one log line");
    like($lines[0] // '', qr/\[\Q$want\E\] .*limiting request.*zone "lvl"/, "$level: logged at [$want]");
}

$t->get('/drywarn/', 'X-Key' => 'dw');
$mark = $t->log_mark;
$r = $t->get('/drywarn/', 'X-Key' => 'dw');
is($r->{status}, 200, 'dry run at warn: passes');
@lines = $t->log_lines(qr/limiting request/, $mark);
like($lines[0] // '', qr/\[warn\] .*limiting request.*dry run/, 'dry run logged at [warn]');

$t->done;
