# haven: the targets a newcomer needs. CMake + Ninja do the work; see README.md.
BUILD_DIR ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= $(shell nproc)
HTTP ?= 127.0.0.1:8500
DATA_DIR ?= ./haven-data

.PHONY: all deps configure build test unit run demo bench-registry bench-proxy bench-cluster bench-mq format tidy clean

all: build

deps:
	./scripts/install-deps.sh

$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)

configure: $(BUILD_DIR)/build.ninja

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

# Every test: unit, integration (real server processes) and real clients (npm). Exits non-zero on any failure.
test: deps build
	cd $(BUILD_DIR) && ctest --output-on-failure --timeout 600 -j $(JOBS)

unit: build
	cd $(BUILD_DIR) && ctest --output-on-failure -L unit -j $(JOBS)

run: deps build
	$(BUILD_DIR)/haven server --http $(HTTP) --data-dir $(DATA_DIR)

# The 100-service scenario under load and chaos (docs/demo.md); DEMO_FLAGS="--cluster 3 --chaos-leader".
demo: deps build
	$(BUILD_DIR)/haven demo $(DEMO_FLAGS)

bench-registry:
	./scripts/install-deps.sh --bench
	./bench/registry/run.sh

bench-proxy:
	./scripts/install-deps.sh --bench
	./bench/proxy/run.sh

bench-cluster:
	./scripts/install-deps.sh --bench
	./bench/cluster/run.sh

bench-mq:
	./scripts/install-deps.sh --bench
	./bench/mq/run.sh

format:
	find src tests bench -name '*.h' -o -name '*.cc' | xargs clang-format -i

tidy: configure
	find src -name '*.cc' | xargs clang-tidy -p $(BUILD_DIR) --quiet

clean:
	rm -rf $(BUILD_DIR)
