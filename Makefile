# ngx_http_throttle_module
#
#   make            build build/ngx_http_throttle_module.so against Debian's nginx-dev
#                   (or: make NGINX_SRC=/path/to/nginx-x.y.z for an upstream source tree)
#   make run        install what is missing, build, start nginx on 127.0.0.1:8080 (foreground)
#   make test       install what is missing, build, run unit and integration tests
#   make bench      benchmark: plain, limit_req, throttle local/sync/strict, OpenResty+Redis
#   make bench-instr  instructions per request (callgrind) of every variant, its extra over
#                   plain nginx and the functions behind it (bench/callgrind.sh)
#   make asan       the module built with ASan/UBSan (build/asan/) and the prove suite run on it
#   make fuzz       libFuzzer (clang, ASan/UBSan) on what comes from outside: Redis replies,
#                   stored cache entries and gzip bodies, cache-key fields, response and request
#                   headers, configuration values (fuzz/*.cpp, built in build/fuzz/); each target
#                   runs FUZZ_SECONDS (default 20) from its seeds in fuzz/corpus/<target>/, and
#                   any crash, abort, leak, timeout or memory blow-up fails (the input is left in
#                   build/fuzz/artifacts/). make fuzz-long: FUZZ_SECONDS=600 each. One target:
#                   make fuzz FUZZ_TARGETS=redis_reply
#   make format     clang-format the C++ sources (make format-check: CI's check that it is a no-op)
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

NGINX_SRC ?= /usr/share/nginx/src
NGINX_BIN ?= /usr/sbin/nginx
BUILD     ?= build
MODULE    := $(BUILD)/ngx_http_throttle_module.so
NGX_TREE  := $(BUILD)/nginx-src
TOP       := $(CURDIR)
NGX_CC_OPT ?= -O2
NGX_LD_OPT ?=

# Debian packages the build, tests, demo and benchmark need. prometheus (the server and
# promtool, for t/63 and t/64): its postinst starts no service where there is neither systemd
# nor a known runlevel (a container: invoke-rc.d finds no start link for runlevel "unknown");
# on a machine booted with systemd it enables and starts prometheus.service on :9090.
DEB_PACKAGES := build-essential g++ cmake make perl nginx nginx-dev libpcre2-dev libssl-dev \
                zlib1g-dev libhiredis-dev libevent-dev libgtest-dev redis-server wrk curl \
                clang-format clang libclang-rt-dev libnginx-mod-stream \
                python3-django python3-djangorestframework gunicorn openssl prometheus

SOURCES := $(wildcard src/*/*.cpp src/*/*.hpp src/*/*/*.cpp src/*/*/*.hpp) config

.PHONY: all deps run test unit integration bench bench-callgrind bench-instr clean format format-check asan fuzz fuzz-long
all: $(MODULE)

deps:
	@missing=()
	for p in $(DEB_PACKAGES); do
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$$p")
	done
	if [ $${#missing[@]} -gt 0 ]; then
	  echo "installing: $${missing[*]}"
	  export DEBIAN_FRONTEND=noninteractive
	  apt-get update -qq
	  apt-get install -y -qq --no-install-recommends "$${missing[@]}" >/dev/null
	fi

# nginx's configure writes into its source tree: configure a private copy of it.
$(NGX_TREE)/objs/Makefile: config Makefile $(BUILD)/sources.list | deps
	rm -rf $(NGX_TREE)
	mkdir -p $(NGX_TREE)
	cp -a $(NGINX_SRC)/. $(NGX_TREE)/
	rm -rf $(NGX_TREE)/objs
	cd $(NGX_TREE)
	if [ -f conf_flags ]; then source ./conf_flags; else NGX_CONF_FLAGS=(--with-compat); fi
	./configure "$${NGX_CONF_FLAGS[@]}" --with-cc-opt="$(NGX_CC_OPT)" --with-ld-opt="$(NGX_LD_OPT)" \
	  --add-dynamic-module=$(TOP) > configure.log 2>&1 \
	  || { tail -30 configure.log; exit 1; }

# The source list is fixed at configure time: reconfigure when files are added or removed.
$(BUILD)/sources.list: FORCE
	@mkdir -p $(BUILD)
	echo "$(sort $(SOURCES))" | cmp -s - $@ || echo "$(sort $(SOURCES))" > $@

$(MODULE): $(SOURCES) $(NGX_TREE)/objs/Makefile
	$(MAKE) --no-print-directory -C $(NGX_TREE) -f objs/Makefile modules
	cp $(NGX_TREE)/objs/ngx_http_throttle_module.so $@.tmp && mv -f $@.tmp $@  # running nginx keep the old file

FORCE:

unit: | deps
	cmake -S . -B $(BUILD)/unit -DCMAKE_BUILD_TYPE=Check > /dev/null
	cmake --build $(BUILD)/unit -j2
	cd $(BUILD)/unit && ctest --output-on-failure

# Two test files at a time (each starts its own nginx and redis-server on free ports): the suite
# takes about half the time of a serial run on 2 cores. TEST_JOBS=1 runs it serially.
TEST_JOBS ?= 2
integration: $(MODULE)
	prove -j$(TEST_JOBS) --timer -I t/lib t/

test: unit integration

# The demo's Redis (for the response cache) listens on a unix socket under build/run only, and
# stops with the demo.
run: $(MODULE)
	mkdir -p $(BUILD)/run
	$(NGINX_BIN) -p $(TOP)/ -c conf.examples/demo.conf -t
	redis-server --port 0 --unixsocket $(TOP)/$(BUILD)/run/redis.sock --unixsocketperm 666 \
	    --save '' --appendonly no \
	    --daemonize yes --pidfile $(TOP)/$(BUILD)/run/redis.pid --logfile $(TOP)/$(BUILD)/run/redis.log
	trap 'kill $$(cat $(TOP)/$(BUILD)/run/redis.pid) 2>/dev/null' EXIT
	trap 'exit 130' INT TERM
	echo "throttle demo on http://127.0.0.1:8080/ (Ctrl-C stops); try: curl -i http://127.0.0.1:8080/api/items/"
	$(NGINX_BIN) -p $(TOP)/ -c conf.examples/demo.conf -g 'daemon off;'

# The module under AddressSanitizer and UBSan inside Debian's (uninstrumented) nginx: the
# sanitizer runtimes are preloaded into nginx only; teardown fails a test on any report.
ASAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
asan: | deps
	$(MAKE) --no-print-directory BUILD=$(BUILD)/asan NGX_CC_OPT="$(ASAN_FLAGS)" \
	  NGX_LD_OPT="-fsanitize=address,undefined" $(BUILD)/asan/ngx_http_throttle_module.so
	TEST_NGINX_MODULE=$(TOP)/$(BUILD)/asan/ngx_http_throttle_module.so \
	TEST_NGINX_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  prove -I t/lib t/

# libFuzzer targets (fuzz/README.md). New inputs go to build/fuzz/corpus/<target>/ (the seeds
# in fuzz/corpus/ are only read); a crash leaves build/fuzz/artifacts/<target>-crash-*.
FUZZ_TARGETS ?= redis_reply redis_async cache_entry cache_key config_values http_headers jwt
FUZZ_SECONDS ?= 20
FUZZ_MAX_LEN ?= 8192
FUZZ_FLAGS ?=
fuzz: | deps
	cmake -S fuzz -B $(BUILD)/fuzz -DCMAKE_CXX_COMPILER=clang++ > /dev/null
	cmake --build $(BUILD)/fuzz -j2 > $(BUILD)/fuzz/build.log 2>&1 || { cat $(BUILD)/fuzz/build.log; exit 1; }
	mkdir -p $(BUILD)/fuzz/artifacts
	for t in $(FUZZ_TARGETS); do
	  mkdir -p $(BUILD)/fuzz/corpus/$$t
	  $(BUILD)/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 \
	    -max_len=$(FUZZ_MAX_LEN) -print_final_stats=1 $(FUZZ_FLAGS) \
	    -artifact_prefix=$(BUILD)/fuzz/artifacts/$$t- \
	    $(BUILD)/fuzz/corpus/$$t fuzz/corpus/$$t > $(BUILD)/fuzz/$$t.log 2>&1 \
	    || { tail -60 $(BUILD)/fuzz/$$t.log; echo "fuzz_$$t failed: $(BUILD)/fuzz/artifacts/"; exit 1; }
	  echo "fuzz_$$t ($(FUZZ_SECONDS) s): $$(grep -E '^#[0-9]+' $(BUILD)/fuzz/$$t.log | tail -1)"
	done
fuzz-long:
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=600

bench: $(MODULE)
	bash bench/run.sh
bench-callgrind: $(MODULE)
	bash bench/callgrind.sh
# instructions per request of every variant, its extra over plain nginx serving the same
# response and the functions behind it (issue 14's measure); ~10 minutes
BENCH_INSTR_VARIANTS ?= plain limit_req throttle sync strict lease throttle_metrics static_json cache_hit cache_hit_plain cache_hit_users cache_hit_users_plain cache_hit_local
bench-instr: $(MODULE)
	BENCH_CG_VARIANTS="$(BENCH_INSTR_VARIANTS)" bash bench/callgrind.sh

FORMATTED := $(wildcard src/*/*.cpp src/*/*.hpp src/*/*/*.cpp src/*/*/*.hpp \
                         t/unit/*.cpp t/unit/*.hpp t/redis/*.cpp t/redis/*.hpp fuzz/*.cpp)

format:
	@clang-format -i $(FORMATTED)

# CI: the sources are as `make format` leaves them.
format-check: | deps
	@clang-format --dry-run --Werror $(FORMATTED)

clean:
	rm -rf $(BUILD)
