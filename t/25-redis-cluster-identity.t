#!/usr/bin/perl
# throttle_identity on a Redis Cluster (issue 12): a session resolved by one nginx instance is
# kept in the cluster (on the master of its key's slot) and found there by another instance,
# which does not ask the application again; a strict zone keyed by the verified user counts it
# across both instances.

use strict;
use warnings;
use Test::More;
use Throttle::Test;
use Throttle::Redis;
use Throttle::App;

my $t1 = Throttle::Test->new(workers => 1)->need_fds(200);
my $cluster = Throttle::Redis->cluster(t => $t1, masters => 3, replicas => 0);
my $app = Throttle::App->new(t => $t1)->start;

my $conf = $app->fill($cluster->fill(<<'EOF'));
http {
    throttle_redis cluster %%REDIS_CLUSTER%% timeout=1s;
    throttle_secret test-secret-0123456789abcdef;
    throttle_identity $cookie_sessionid resolve=/_identity zone=ids:1m ttl=5m;
    throttle_zone $throttle_user_id zone=user:1m rate=3r/h mode=strict;

    server {
        listen 127.0.0.1:%%PORT%%;
        throttle_identity_resolve on;
        location / {
            throttle zone=user;
            add_header X-Uid "[$throttle_user_id]" always;
            add_header X-Status $throttle_status always;
            proxy_pass http://%%APP%%;
        }
        location = /_identity {
            internal;
            proxy_pass http://%%APP%%/_resolve;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
    }
}
EOF
$t1->write_conf($conf)->run;
my $t2 = Throttle::Test->new(workers => 1)->write_conf($conf)->run;

sub resolves { $app->count('/_resolve') }
sub ask {
    my ($t, $cookie) = @_;
    my $r = $t->get('/api/x', Cookie => "sessionid=$cookie");
    my ($u) = ($r->{headers}{'x-uid'} // '') =~ /^\[(.*)\]$/;
    return ($u, $r);
}

Throttle::Redis::clear_of_window_edge(3600, 20);

my ($u, $r) = ask($t1, 'u42.a');
is($u, '42', 'first instance: the session resolves to user 42');
is(resolves(), 1, 'the application was asked once');
my @ids;
ok(Throttle::Redis::wait_for(sub {
    @ids = map { grep { length } $_->cli('KEYS', 'throttle:identity:*') } $cluster->masters;
    @ids == 1;
}), 'the resolution is kept in the cluster') or diag "@ids";
ok(Throttle::Redis::wait_for(sub {
    ($u) = ask($t2, 'u42.a');
    ($u // '') eq '42';
}), 'second instance: user 42 too');
is(resolves(), 1, 'found in the cluster: the application was not asked again');

# The strict zone keyed by the user: 3 per hour across both instances (2 counted above).
my @s;
push @s, (ask($_ % 2 ? $t2 : $t1, 'u42.a'))[1]{status} for 1 .. 4;
is(join(' ', @s), '200 429 429 429', 'user 42: the third request passes, then 429, across both');

$t2->finish;
$t1->finish;
$cluster->stop;
undef $cluster;
done_testing();
