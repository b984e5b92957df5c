#!/usr/bin/perl
# Keys of any length: a 10 KB key is limited, two 10 KB keys that differ only in the last
# byte are different buckets, and keys around the inline/digest boundary stay apart.

use strict;
use warnings;
use Test::More;
use Throttle::Test;

my $t = Throttle::Test->new->write_conf(<<'EOF')->run;
http {
    large_client_header_buffers 4 16k;
    throttle_zone $http_x_key zone=k:1m rate=2r/h;

    server {
        listen 127.0.0.1:%%PORT%%;
        location / { throttle zone=k; proxy_pass http://127.0.0.1:%%PORT_2%%; }
    }
    server {
        listen 127.0.0.1:%%PORT_2%%;
        location / { return 200 "ok\n"; }
    }
}
EOF

sub statuses { my ($key, $n) = @_; [map { $t->get('/', 'X-Key' => $key)->{status} } 1 .. $n] }

my $long = join '', map { chr(ord('a') + $_ % 26) } 0 .. 9999;
is(length $long, 10000, 'a 10,000 byte key');
(my $other = $long) =~ s/.$/Z/;
(my $first = $long) =~ s/^./Z/;

my $r = $t->get('/', 'X-Key' => $long);
is($r->{status}, 200, 'long key: 1 passes');
is($r->{headers}{ratelimit} =~ s/;t=\d+$//r, '"k";r=1', 'long key: RateLimit r=1');
is_deeply(statuses($long, 2), [200, 429], 'long key: 2 passes, 3 rejected');
is_deeply(statuses($other, 3), [200, 200, 429], 'differs in the last byte: its own bucket');
is_deeply(statuses($first, 3), [200, 200, 429], 'differs in the first byte: its own bucket');
is_deeply(statuses($long, 1), [429], 'the first long key is still limited');

# Around the length where keys stop being stored as they are (32 bytes in the slot table).
for my $len (31, 32, 33, 64) {
    my $k = 'x' x $len;
    is_deeply(statuses($k, 3), [200, 200, 429], "key of $len bytes: its own bucket");
}
is_deeply(statuses('x' x 65, 3), [200, 200, 429], 'a key that extends another is another bucket');
is_deeply(statuses('x' x 32 . 'y', 3), [200, 200, 429], '33 bytes, different last byte');

$t->done;
