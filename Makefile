# Thin wrapper over CMake. `make` builds the tool and libraries, `make test`
# runs the suite, `make bench` builds the benchmarks, `make demo` runs the demo.
BUILD ?= build
JOBS ?= $(shell nproc)
SHELL := /bin/bash
CMAKE_FLAGS ?=

.PHONY: all deps configure test test-asan bench demo install clean format

all: configure
	cmake --build $(BUILD) -j $(JOBS)

deps:
	@./scripts/install-deps.sh

configure: deps
	@test -f $(BUILD)/CMakeCache.txt || cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

test: all
	@cd $(BUILD) && { ctest --output-on-failure -j $(JOBS) > ctest.log 2>&1; st=$$?; \
	  grep -v -E '^(Total Test time|[0-9]+% tests passed)' ctest.log; \
	  grep -E '^Total Test time' ctest.log; grep -E '^[0-9]+% tests passed' ctest.log; exit $$st; }

# The sanitizer settings CI uses (.ci/run); lsan.supp holds Open MPI's own leaks.
test-asan:
	ASAN_OPTIONS="$${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}" \
	UBSAN_OPTIONS="$${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
	LSAN_OPTIONS="$${LSAN_OPTIONS:-suppressions=$(CURDIR)/.ci/lsan.supp}" \
	$(MAKE) test BUILD=build-asan CMAKE_FLAGS="-DAP_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo"

bench: configure
	cmake --build $(BUILD) -j $(JOBS) --target bench

# AlignProp on the shipped shapes model (docs/demo.md); without the model the
# tool says so and runs a random tiny model through the pipeline instead.
demo: all
	$(BUILD)/alignprop demo

install: all
	cmake --install $(BUILD) $(if $(PREFIX),--prefix $(PREFIX),)

clean:
	rm -rf build build-asan

# Regenerates the PyTorch reference fixtures under tests/ref/ (needs Debian's
# python3-torch; CI uses the committed .bin files and never runs this).
.PHONY: fixtures
fixtures:
	@for f in tests/ref/gen_*.py; do echo "fixtures: $$f"; /usr/bin/python3 $$f || exit 1; done
