#!/usr/bin/perl
# hiredis is linked into the module statically with its symbols local: nginx loads modules
# RTLD_GLOBAL and another module (Debian's libnginx-mod-nchan) may carry and export its own
# hiredis, so the module must neither export hiredis symbols (others would bind to ours) nor
# import them (ours would bind to theirs), nor depend on libhiredis.so.
# The checker is first shown to catch both mistakes on two small shared objects built here.

use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use FindBin;

my $repo   = "$FindBin::Bin/..";
my $module = $ENV{TEST_NGINX_MODULE} // "$repo/build/ngx_http_throttle_module.so";
plan(skip_all => "module not built: $module (run make)") unless -f $module;
plan(skip_all => 'nm/objdump not found (binutils)')
    unless `sh -c 'command -v nm && command -v objdump'` =~ /objdump/;

chomp(my $archive = `cc -print-file-name=libhiredis.a`);
plan(skip_all => 'libhiredis.a not found (libhiredis-dev)') unless $archive =~ m{/} && -f $archive;

# Every global symbol hiredis defines: redis*, sds*, hi_*, ...
my %hiredis = map { (split ' ')[-1] => 1 }
    grep { /^\s*[0-9a-f]*\s+[A-TV-Z]\s+\S+$/ } `nm -g --defined-only '$archive'`;
ok(exists $hiredis{redisAsyncCommandArgv} && exists $hiredis{redisReaderCreate},
    'hiredis symbol list read from ' . $archive);

# Problems of one shared object: hiredis symbols it exports or imports, a libhiredis.so it needs.
sub problems {
    my ($so) = @_;
    my @bad;
    for (`nm -D '$so'`) {
        my ($type, $name) = /^\s*[0-9a-f]*\s+(\S)\s+(\S+?)(?:@.*)?$/ or next;
        next unless $hiredis{$name} || $name =~ /^(?:redisAsync|redisReader)/;
        push @bad, ($type eq 'U' ? 'imports' : 'exports') . " $name";
    }
    push @bad, map { /NEEDED\s+(\S*hiredis\S*)/ ? ("needs $1") : () } `objdump -p '$so'`;
    return @bad;
}

SKIP: {
    skip 'no C compiler for the checker self-test', 2 unless `sh -c 'command -v cc'`;
    my $dir = tempdir(CLEANUP => 1);
    open my $fh, '>', "$dir/t.c" or die;
    print $fh "#include <hiredis/async.h>\n"
        . "void *f(void) { return redisAsyncConnect(\"127.0.0.1\", 1); }\n";
    close $fh;
    system("cc -fPIC -shared -o $dir/exports.so $dir/t.c -l:libhiredis.a") == 0 or die;
    system("cc -fPIC -shared -o $dir/imports.so $dir/t.c -lhiredis") == 0 or die;
    ok((grep { /^exports redisAsyncConnect$/ } problems("$dir/exports.so")),
        'checker: catches exported hiredis symbols');
    ok((grep { /^imports redisAsyncConnect$/ } problems("$dir/imports.so"))
        && (grep { /^needs libhiredis/ } problems("$dir/imports.so")),
        'checker: catches imported hiredis symbols and libhiredis.so');
}

my @bad = problems($module);
is(scalar @bad, 0, 'module neither exports nor imports hiredis symbols')
    or diag(join "\n", @bad[0 .. ($#bad < 20 ? $#bad : 19)]);

# It does contain hiredis (its reply parser, redisReader), as local symbols (when the symbol table is there).
my @local = grep { /\s[tT]\s+redisReaderFeed$/ } `nm '$module' 2>/dev/null`;
SKIP: {
    skip 'module is stripped', 1 unless `nm '$module' 2>&1` !~ /no symbols/;
    like($local[0] // '', qr/\st\s/, 'hiredis is linked in, with local binding');
}

# And nginx still loads it.
SKIP: {
    my $nginx = $ENV{TEST_NGINX_BINARY} // '/usr/sbin/nginx';
    skip "no nginx binary at $nginx", 1 unless -x $nginx;
    my $dir = tempdir(CLEANUP => 1);
    open my $fh, '>', "$dir/nginx.conf" or die;
    print $fh "load_module $module;\nerror_log $dir/error.log;\npid $dir/nginx.pid;\n"
        . "events {}\nhttp { access_log off; }\n";
    close $fh;
    # A module built with sanitizers (make asan) needs their runtimes preloaded into nginx.
    local $ENV{LD_PRELOAD} = $ENV{TEST_NGINX_PRELOAD} if $ENV{TEST_NGINX_PRELOAD};
    my $out = `'$nginx' -p '$dir' -c '$dir/nginx.conf' -t 2>&1`;
    is($?, 0, 'nginx -t loads the module') or diag($out);
}

done_testing();
