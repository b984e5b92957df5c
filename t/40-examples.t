# The configurations in conf.examples/ are valid as shipped (module path aside).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Throttle::Test;

my $t = Throttle::Test->new;
my $root = "$FindBin::Bin/..";

for my $name (qw(demo.conf django.conf django-jwt.conf sentinel.conf cluster.conf)) {
    my $text = $t->read_file("$root/conf.examples/$name");
    my $module = $t->module_path;
    # demo.conf loads build/... relative to the prefix; django.conf the Debian path.
    $text =~ s{load_module \S+;}{load_module $module;};
    $text =~ s{access_log /var/log/nginx/}{access_log ${\ $t->testdir}/};
    $text =~ s{listen (?:127\.0\.0\.1:)?\d+;}{'listen 127.0.0.1:' . $t->port . ';'}ge;
    mkdir $t->testdir . '/build';
    mkdir $t->testdir . '/build/run';  # demo.conf's relative paths, under the prefix
    my $conf = $t->testdir . "/$name";
    $t->write_file($conf, $text);
    local $ENV{REDIS_PASSWORD} = 'example';
    local $ENV{DJANGO_SECRET_KEY} = 'example-django-secret-key-0123456789-abcdefghijklmnopq';
    local $ENV{LD_PRELOAD} = $ENV{TEST_NGINX_PRELOAD} if $ENV{TEST_NGINX_PRELOAD};  # make asan
    my $nginx = $ENV{TEST_NGINX_BINARY} // '/usr/sbin/nginx';
    my $out = `$nginx -t -p ${\ $t->testdir}/ -e ${\ $t->testdir}/t.log -c $conf 2>&1`;
    is($?, 0, "$name passes nginx -t") or diag($out);
    like($out, qr/test is successful/, "$name: nginx says so");
}

$t->done;
