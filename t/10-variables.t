#!/usr/bin/perl
# $throttle_status (PASSED, REJECTED, REJECTED_DRY_RUN; empty when no zone applied) and
# $throttle_remaining (the most restrictive zone's remaining count; empty when none applied),
# in response headers and in the access log.

use strict;
use warnings;
use Test::More;
use Throttle::Test;

my $t = Throttle::Test->new->write_conf(<<'EOF')->run;
http {
    throttle_zone $http_x_key zone=wide:1m   rate=10r/m;
    throttle_zone $http_x_key zone=narrow:1m rate=3r/m;
    throttle_zone $http_x_key zone=dry:1m    rate=1r/h;

    log_format vars "$request_uri $status [$throttle_status] [$throttle_remaining]";

    server {
        listen 127.0.0.1:%%PORT%%;
        access_log %%TESTDIR%%/vars.log vars;
        add_header X-Status "[$throttle_status]" always;
        add_header X-Remaining "[$throttle_remaining]" always;

        location /two/ { throttle zone=wide; throttle zone=narrow; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /dry/ { throttle zone=dry; throttle_dry_run on; proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location /none/ { proxy_pass http://127.0.0.1:%%PORT_2%%; }
        location = /return { return 200 "[$throttle_status] [$throttle_remaining]\n"; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        access_log off;
        location / { return 200 "ok\n"; }
    }
}
EOF

sub vars { my ($r) = @_; [$r->{status}, $r->{headers}{'x-status'}, $r->{headers}{'x-remaining'}] }

# two zones: the remaining count is the narrower one's
is_deeply(vars($t->get("/two/$_", 'X-Key' => 'a')), [200, '[PASSED]', '[' . (3 - $_) . ']'],
    "two zones, request $_: PASSED, remaining " . (3 - $_)) for 1 .. 3;
is_deeply(vars($t->get('/two/4', 'X-Key' => 'a')), [429, '[REJECTED]', '[0]'],
    'two zones, request 4: REJECTED, remaining 0');

# empty key: no zone applied
is_deeply(vars($t->get('/two/nokey')), [200, '[]', '[]'], 'empty key: both empty');

# no throttle in the location
is_deeply(vars($t->get('/none/x', 'X-Key' => 'a')), [200, '[]', '[]'], 'no throttle: both empty');
my $r = $t->get('/return', 'X-Key' => 'a');
is($r->{body}, "[] []\n", 'no throttle: empty in return too');

# dry run
is_deeply(vars($t->get('/dry/1', 'X-Key' => 'd')), [200, '[PASSED]', '[0]'], 'dry run: PASSED');
is_deeply(vars($t->get('/dry/2', 'X-Key' => 'd')), [200, '[REJECTED_DRY_RUN]', '[0]'],
    'dry run: REJECTED_DRY_RUN');

# the same values reach the access log (log phase)
my %log = map { /^(\S+) (.*)$/ ? ($1, $2) : () } split /\n/, $t->read_file('vars.log');
# nginx logs a variable that is "not found" as "-" and an empty one as nothing; either means
# "no zone applied".
s/\[-\]/[]/g for values %log;
is_deeply(\%log, {
    '/two/1'   => '200 [PASSED] [2]',
    '/two/2'   => '200 [PASSED] [1]',
    '/two/3'   => '200 [PASSED] [0]',
    '/two/4'   => '429 [REJECTED] [0]',
    '/two/nokey' => '200 [] []',
    '/none/x'  => '200 [] []',
    '/return'  => '200 [] []',
    '/dry/1'   => '200 [PASSED] [0]',
    '/dry/2'   => '200 [REJECTED_DRY_RUN] [0]',
}, 'access log variables');

$t->done;
