# Top-level entry points.  The real build is CMake; this file installs the
# Debian packages, drives CMake and runs the tests inside infra/testenv.
#
#   make build            RelWithDebInfo build into build/ (binaries in build/bin/)
#   make test             build + ctest against a throwaway PostgreSQL and Redis
#   make test SANITIZE=1  the same with ASan/UBSan, built into build-asan/
#   make demo             build + bring up the local stack (infra/demo)
#   make deps             install missing Debian packages (implied by the above)
#   make clean            remove the build directories

SANITIZE ?= 0
CMAKE ?= cmake
CTEST ?= ctest
JOBS ?= 2

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

.PHONY: all deps build test demo clean

all: build

deps:
	@infra/deps

build: deps
	$(CMAKE) -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_EXTRA)
	$(CMAKE) --build $(BUILD_DIR) -j$(JOBS)

test: build
	STAMPCP_BUILD_DIR=$(BUILD_DIR) $(TEST_ENV) infra/testenv run -- \
		$(CTEST) --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS) --timeout 300

demo: build
	infra/demo

clean:
	rm -rf build build-asan
