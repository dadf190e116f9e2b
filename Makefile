# Makefile -- thin wrapper around tools/ and cmake; the real build is CMakeLists.txt.
#   make build              configure (RelWithDebInfo) and compile build/moonfork
#   make run [APP=x.lua]    install missing packages, build, run APP (default: the chat demo)
#   make test               install missing packages, build, run every suite (tools/run-tests)
#   make fuzz [FUZZ_RUNS=n] build the libFuzzer harness with clang in build-fuzz/, run it n times
#                           (default 20000) from test/fuzz/corpus (tools/run-fuzz)
#   make clean              remove build/ and build-fuzz/

BUILD_DIR  ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS       ?= 2
APP        ?= examples/chat/server.lua
ARGS       ?=

MAKEFLAGS  += --no-print-directory

FUZZ_RUNS  ?= 20000

.PHONY: all build run test deps deps-test fuzz clean

all: build

deps:
	tools/setup-deps

# the tests also need chromium and Node.js for the browser test, and clang for the fuzz harnesses
deps-test:
	tools/setup-deps --browser --fuzz

build:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)
	cmake --build $(BUILD_DIR) -j$(JOBS)

run: deps build
	exec $(BUILD_DIR)/moonfork $(ARGS) $(APP)

test: deps-test build
	@BUILD_DIR=$(BUILD_DIR) tools/run-tests

fuzz:
	tools/setup-deps --fuzz
	tools/run-fuzz -runs=$(FUZZ_RUNS)

clean:
	rm -rf $(BUILD_DIR) build-fuzz
