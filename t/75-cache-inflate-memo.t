#!/usr/bin/perl
# The memo of inflated bodies (issue 14, item 3): a client without Accept-Encoding: gzip gets a
# stored gzip body inflated, and a worker keeps what it inflated, found by the stored gzip bytes
# themselves (core/inflate_memo.hpp), not by the entry: users served the same body share
# one inflation; users served different bodies never get each other's. The Redis lookup still
# decides what is served: an invalidated entry is never answered from the memo. The memo is
# bounded in bytes (throttle_cache_inflate_memo): a full one evicts, and an evicted body is
# inflated again, byte for byte. A corrupt stored body is never kept: every plain request for it
# gets the 500 of today, and the log line.
#
# One worker, so that every request meets the same memo. Whether a body came from the memo is
# read from the debug log ("throttle_cache: plain body from the inflate memo" / "inflated").

use strict;
use warnings;
use Test::More;
use IO::Uncompress::Gunzip ();
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t = Throttle::Test->new(workers => 1, log_level => 'debug');
my $binary = $ENV{TEST_NGINX_BINARY} // '/usr/sbin/nginx';
plan(skip_all => "$binary has no debug log (--with-debug): this file reads it")
    unless `$binary -V 2>&1` =~ /--with-debug/;
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;

# The same 3,000-byte JSON for every user: a static file served by a second server block.
my $shared = '{"items":[' . join(',', map { qq({"id":$_,"name":"item $_"}) } 1 .. 200) . ']}';
$shared = substr($shared . (' ' x 3000), 0, 3000);
$t->write_file('shared.json', $shared);

$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_redis %%REDIS%% timeout=5s;
    throttle_cache_secret 0123456789abcdef-inflate-memo;
    throttle_cache_user $cookie_sessionid;
    throttle_cache_inflate_memo 12k;
    add_header X-Cache $throttle_cache_status always;
    proxy_http_version 1.1;

    server {
        listen 127.0.0.1:%%PORT%%;
        location /shared/ {
            throttle_cache shared;
            throttle_cache_valid 200 600s;
            proxy_pass http://127.0.0.1:%%PORT_2%%;
        }
        location /per/ {
            throttle_cache per;
            throttle_cache_valid 200 600s;
            proxy_pass http://%%APP%%;
        }
        location /bad/ {
            throttle_cache bad;
            throttle_cache_valid 200 600s;
            proxy_pass http://%%APP%%;
        }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / {
            default_type application/json;
            root %%TESTDIR%%;
            rewrite ^ /shared.json break;
        }
    }
}
EOF

sub xc { $_[0]{headers}{'x-cache'} // '' }
sub gunzip_str {
    my ($z) = @_;
    my $out;
    IO::Uncompress::Gunzip::gunzip(\$z => \$out) or return undef;
    return $out;
}
sub user { ('Cookie' => "sessionid=$_[0]") }
sub gz { ('Accept-Encoding' => 'gzip') }
# What the debug log says about plain bodies since $mark: "memo" or "inflated", in order.
sub plain_sources {
    my ($mark) = @_;
    return map { /plain body from the inflate memo/ ? 'memo' : 'inflated' }
        $t->log_lines(qr/throttle_cache: plain body /, $mark);
}
# A stored entry must be a HIT; the first request of each user stores it (MISS).
sub stored {
    my ($path, $u) = @_;
    my $r = $t->get($path, user($u), gz());
    is($r->{status}, 200, "$u $path: stored") or diag(explain($r->{headers}));
    return $r;
}

# ---- one body for every user: plain and gzip clients get the same bytes as without the memo

{
    my $path = '/shared/items.json';
    stored($path, 'alice');
    stored($path, 'bob');
    my $mark = $t->log_mark;
    my $a1 = $t->get($path, user('alice'));
    is(xc($a1), 'HIT', 'alice, plain: HIT');
    is($a1->{body}, $shared, 'alice, plain: the file, byte for byte');
    is($a1->{headers}{'content-length'}, length $shared, 'alice, plain: its length');
    ok(!defined $a1->{headers}{'content-encoding'}, 'alice, plain: no Content-Encoding');
    my $b1 = $t->get($path, user('bob'));
    is(xc($b1), 'HIT', 'bob, plain: HIT');
    is($b1->{body}, $shared, 'bob, plain: the file, byte for byte');
    is_deeply([plain_sources($mark)], ['inflated', 'memo'],
        'bob\'s entry holds the same gzip bytes: inflated once, for alice');
    my $bz = $t->get($path, user('bob'), gz());
    is(xc($bz), 'HIT', 'bob, gzip: HIT');
    is($bz->{headers}{'content-encoding'}, 'gzip', 'bob, gzip: the stored gzip body');
    is(gunzip_str($bz->{body}), $shared, 'bob, gzip: gunzips to the file');
    my $head = $t->request('HEAD', $path, [user('alice')]);
    is($head->{headers}{'content-length'}, length $shared, 'HEAD, plain: the plain length');
}

# ---- different bodies: each user gets their own, however often the memo is asked

{
    my $path = '/per/me?_size=4000';
    my %miss;
    for my $u (qw(carol dave)) {
        my $r = stored($path, $u);
        $miss{$u} = gunzip_str($r->{body});
        is(Throttle::App::parse_body($miss{$u})->{cookie}, "sessionid=$u", "$u: a body made for $u");
    }
    isnt($miss{carol}, $miss{dave}, 'two different bodies');
    my $mark = $t->log_mark;
    my @wrong;
    for my $i (1 .. 6) {
        for my $u (qw(carol dave)) {
            my $r = $t->get($path, user($u));
            push @wrong, "$u #$i: " . xc($r) if xc($r) ne 'HIT' || $r->{body} ne $miss{$u};
        }
    }
    is_deeply(\@wrong, [], 'twelve plain HITs, each the user\'s own body, byte for byte');
    my @src = plain_sources($mark);
    is(scalar(grep { $_ eq 'memo' } @src), 10, 'the memo answered all but the first of each')
        or diag("@src");
}

# ---- an invalidated entry is looked up again, never answered from the memo

{
    my $path = '/per/inv?_size=3000';
    my $first = gunzip_str(stored($path, 'erin')->{body});
    my $h = $t->get($path, user('erin'));
    is($h->{body}, $first, 'erin, plain: HIT, the stored body');
    my $before = $app->count('/per/inv');
    my $w = $t->request('POST', '/per/inv', [user('erin'), 'Content-Length' => 0]);
    is($w->{status}, 200, 'erin writes (POST): her generation moves');
    my $r = $t->get($path, user('erin'));
    is(xc($r), 'MISS', 'erin, plain, after the write: MISS');
    is($app->count('/per/inv'), $before + 2, 'the write and the GET went upstream');
    my $n_first = Throttle::App::parse_body($first)->{n};
    my $n_now = Throttle::App::parse_body($r->{body})->{n};
    cmp_ok($n_now, '>', $n_first, 'a body made after the write, not the memo\'s');
    my $again = $t->get($path, user('erin'));
    is(xc($again), 'HIT', 'erin, plain, again: HIT');
    is($again->{body}, $r->{body}, 'the new body');
}

# ---- a full memo evicts (12k: fewer than four 4,000-byte bodies with their gzip bytes); evicted
# bodies come back right

{
    my @users = qw(u1 u2 u3 u4);
    my %body;
    $body{$_} = gunzip_str(stored('/per/ev?_size=4000', $_)->{body}) for @users;
    my $mark = $t->log_mark;
    my @wrong;
    for my $pass (1 .. 3) {
        for my $u (@users) {    # four bodies in turn through room for fewer: each evicts
            my $r = $t->get('/per/ev?_size=4000', user($u));
            push @wrong, "$u pass $pass" if xc($r) ne 'HIT' || $r->{body} ne $body{$u};
        }
    }
    is_deeply(\@wrong, [], 'every plain HIT the user\'s own body');
    my @src = plain_sources($mark);
    is(scalar @src, 12, 'twelve plain bodies');
    is(scalar(grep { $_ eq 'memo' } @src), 0, 'least recently used first: each was evicted before its turn')
        or diag("@src");
    $mark = $t->log_mark;
    $t->get('/per/ev?_size=4000', user('u4')) for 1 .. 2;
    is_deeply([plain_sources($mark)], ['memo', 'memo'], 'the last one inflated is still there');
}

# ---- a corrupt stored body: the same 500 as without the memo, every time, never kept

{
    my $path = '/bad/x?_size=3000';
    my $good = gunzip_str(stored($path, 'frank')->{body});
    is($t->get($path, user('frank'))->{body}, $good, 'frank, plain: HIT, the body');
    # the namespace's one entry: flip a byte inside its deflate data (before the gzip trailer)
    my @keys = grep { /^throttle:cache:\{bad:[0-9a-f]{64}\}:e:/ } $redis->keys('throttle:cache:*');
    is(scalar @keys, 1, 'one entry in namespace bad') or diag(join "\n", $redis->keys('*'));
    my $flip = "local v = redis.call('GET', KEYS[1]); local at = #v - 20; "
        . "redis.call('SETRANGE', KEYS[1], at, string.char((string.byte(v, at + 1) + 1) % 256)); "
        . "return #v";
    cmp_ok($redis->cli('EVAL', $flip, 1, $keys[0]), '>', 100, 'the entry corrupted');
    my $mark = $t->log_mark;
    my @r = map { $t->get($path, user('frank')) } 1 .. 2;
    is_deeply([map { $_->{status} } @r], [500, 500], 'plain: 500, twice');
    is(scalar($t->log_lines(qr/\[error\].*a stored body does not decompress/, $mark)), 2,
        'logged each time');
    is_deeply([plain_sources($mark)], ['inflated', 'inflated'], 'never from the memo');
    my $z = $t->get($path, user('frank'), gz());
    is($z->{status}, 200, 'gzip: the stored bytes, as before');
}

$t->done;
