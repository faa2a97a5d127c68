# Top-level entry points.  The real build is CMake; this file installs the
# Debian packages, drives CMake and runs the tests inside infra/testenv.
#
#   make build            RelWithDebInfo build into build/ (binaries in build/bin/)
#   make test             build + ctest against a throwaway PostgreSQL and Redis
#   make test SANITIZE=1  the same with ASan/UBSan, built into build-asan/
#   make test-ha          only the HA tests (ctest -L ha: Patroni + etcd, Redis + Sentinel;
#                         they are part of `make test` too)
#   make demo             build + bring up the local stack (infra/demo)
#   make deps             install missing Debian packages (implied by the above)
#   make fuzz             libFuzzer harnesses (tests/fuzz, clang, build-fuzz/), FUZZ_SECONDS each
#   make fuzz-smoke       the same for FUZZ_SMOKE_SECONDS each, two at a time; `make test`
#                         runs it once (in the SANITIZE=0 pass only)
#   make clean            remove the build directories

SANITIZE ?= 0
CMAKE ?= cmake
CTEST ?= ctest
JOBS ?= 2
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 20
FUZZ_DIR := $(CURDIR)/build-fuzz

ifeq ($(SANITIZE),1)
BUILD_DIR := $(CURDIR)/build-asan
CMAKE_EXTRA := -DSTAMPCP_SANITIZE=ON
TEST_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
            UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
else
BUILD_DIR := $(CURDIR)/build
CMAKE_EXTRA :=
TEST_ENV :=
endif

.PHONY: all deps build test test-ha demo clean fuzz fuzz-smoke fuzz-build

all: build

deps:
	@infra/deps

build: deps
	$(CMAKE) -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_EXTRA)
	$(CMAKE) --build $(BUILD_DIR) -j$(JOBS)

test: build
	infra/sdk-node $(BUILD_DIR)/sdk-node
	STAMPCP_BUILD_DIR=$(BUILD_DIR) $(TEST_ENV) infra/testenv run -- \
		$(CTEST) --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS) --timeout 300
ifeq ($(SANITIZE),0)
	@$(MAKE) --no-print-directory fuzz-smoke
endif

test-ha: build
	STAMPCP_BUILD_DIR=$(BUILD_DIR) $(TEST_ENV) infra/testenv run -- \
		$(CTEST) --test-dir $(BUILD_DIR) -L ha --output-on-failure -j1 --timeout 300

# Fuzzing: clang with -fsanitize=fuzzer,address,undefined. The libraries are
# built without -Werror here (clang warns where gcc does not; the gcc builds
# keep -Werror); the harnesses themselves are -Werror. run-fuzz prints one
# line per harness; the last line says fuzz-smoke/fuzz PASS or FAIL.
fuzz-build: deps
	CC=clang $(CMAKE) -S . -B $(FUZZ_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTAMPCP_FUZZ=ON -DSTAMPCP_WERROR=OFF
	$(CMAKE) --build $(FUZZ_DIR) --target fuzzers -j$(JOBS)

fuzz-smoke fuzz: fuzz-build
	@rm -f $(FUZZ_DIR)/fuzz-work/logs/*.summary; start=$$(date +%s); \
	if FUZZ_RUN_SECONDS=$(if $(filter fuzz,$@),$(FUZZ_SECONDS),$(FUZZ_SMOKE_SECONDS)) \
	   $(CTEST) --test-dir $(FUZZ_DIR) -L fuzz-smoke --output-on-failure \
	   -j$(if $(filter fuzz,$@),1,$(JOBS)); then ok=PASS; else ok=FAIL; fi; \
	cat $(FUZZ_DIR)/fuzz-work/logs/*.summary 2>/dev/null; \
	echo "$@: $$ok ($$(ls $(FUZZ_DIR)/fuzz-work/logs/*.summary 2>/dev/null | wc -l) harnesses, $$(($$(date +%s) - start)) s)"; \
	test $$ok = PASS

demo: build
	infra/demo

clean:
	rm -rf build build-asan build-fuzz
