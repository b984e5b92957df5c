# Writes whose response is held until Redis answered the invalidation: large, streamed
# (proxy_buffering off), temp-file-backed, chunked and empty bodies all arrive whole.
use strict; use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;
my $t = Throttle::Test->new;
my $redis = Throttle::Redis->new(t => $t);
my $app = Throttle::App->new(t => $t)->start;
$t->write_conf($redis->fill(<<'EOF'))->run;
http {
    throttle_redis %%REDIS%%;
    throttle_cache_secret 0123456789abcdefXYZ;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /w/ {
            throttle_cache_user $cookie_sessionid;
            throttle_cache_invalidate review;
            proxy_buffering off;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
        location /b/ {
            throttle_cache_user $cookie_sessionid;
            throttle_cache_invalidate review;
            proxy_buffers 2 4k; proxy_buffer_size 4k; proxy_busy_buffers_size 4k;
            proxy_pass http://127.0.0.1:%%APP_PORT%%;
        }
    }
}
EOF
for my $loc ('/w/', '/b/') {
    for my $size (0, 100, 200000, 1500000) {
        my $r = $t->request('POST', "${loc}x?_size=$size", { Cookie => 'sessionid=a' }, 'body');
        is($r->{status}, 200, "$loc $size status");
        is(length($r->{body}), $size == 0 ? length($r->{body}) : $size, "$loc $size length");
        ok($size == 0 || Throttle::App::parse_body($r->{body})->{pattern_ok}, "$loc $size pattern");
    }
    my $r = $t->request('DELETE', "${loc}x?_status=204", { Cookie => 'sessionid=a' });
    is($r->{status}, 204, "$loc 204");
    $r = $t->request('POST', "${loc}x?_chunked=1&_size=50000", { Cookie => 'sessionid=a' }, 'b');
    is(length($r->{body}), 50000, "$loc chunked");
}
$t->done;
