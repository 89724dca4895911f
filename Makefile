# Sluice: run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
PKGS := ./...
CLUSTER := test/cluster
STATICCHECK = $(shell $(GO) tool -n staticcheck)
FUZZTIME ?= 100000x

.PHONY: help deps generate check-generate build test test-cluster fuzz test-unit bench bench-steering bench-proxy bench-destination lint demo demo-down cluster-up cluster-down clean

help: ## Show the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

deps: ## Install the Debian packages the build and tests need (as root).
	@bash test/deps.sh

generate: ## Regenerate the bpf2go objects and the protobuf/gRPC code (the control plane's and the demo's).
	$(GO) generate ./bpf/... ./controlplane/api/... ./test/demo/api/...

check-generate: generate ## Fail if the committed generated code is stale.
	@git diff --exit-code --stat -- bpf/ controlplane/api/ test/demo/api/ || { echo "generated code is stale: run 'make generate' and commit"; exit 1; }

build: ## Build every binary into bin/.
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./agent/cmd/... ./cli/cmd/... ./proxy/cmd/... ./controlplane/cmd/...

test: deps check-generate lint ## Run every test as root on the real kernel (what CI runs), the local cluster's, then the fuzzers briefly.
	$(GO) test -count=1 -timeout 75m -p 2 $(PKGS)
	$(MAKE) test-cluster
	FUZZTIME=$(FUZZTIME) bash test/fuzz.sh

test-cluster: deps ## The local Kubernetes cluster's tests (its own module; one package at a time: one cluster per machine).
	cd $(CLUSTER) && $(GO) test -count=1 -timeout 40m -p 1 ./...

cluster-up: deps ## Build (first time ~5-8 min) and start the local Kubernetes cluster; prints the kubeconfig path.
	cd $(CLUSTER) && $(GO) run ./cmd/cluster up

cluster-down: ## Stop the local cluster and remove everything it made (safe to run twice, or after a crash).
	cd $(CLUSTER) && $(GO) run ./cmd/cluster down

fuzz: ## Run every fuzz target for FUZZTIME each (default 100000x executions; e.g. make fuzz FUZZTIME=5m).
	FUZZTIME=$(FUZZTIME) bash test/fuzz.sh

test-unit: ## Run the tests without installing anything (kernel tests skip unless root).
	$(GO) test -count=1 $(PKGS)

bench: deps ## The mesh benchmark: no mesh, Sluice (iptables, eBPF, eBPF+sk_msg, eBPF+sk_msg with mTLS) and nginx, mTLS handshakes; writes docs/benchmarks.md (~25 min).
	$(GO) test -count=1 -timeout 45m -run '^$$' -bench Mesh -benchtime 1x ./test/bench/mesh/ -args -report

bench-steering: deps build ## Benchmark connect(), latency and throughput: none, iptables, eBPF, eBPF+sk_msg.
	$(GO) test -count=1 -timeout 30m -run '^$$' -bench . -benchtime 1x ./test/bench/steering/ -args -report

bench-destination: deps ## Destination update propagation (API server -> proxy) with 1000 and 5000 endpoints; writes docs/destination-benchmark.md.
	$(GO) test -count=1 -timeout 30m -run '^$$' -bench . -benchtime 1x ./test/bench/destination/ -args -report

bench-proxy: deps ## Benchmark sluice-proxy against nginx: added latency at 1000 req/s, req/s per core, RSS.
	$(GO) test -count=1 -timeout 30m -run '^$$' -bench . -benchtime 1x ./test/bench/proxy/ -args -report

lint: ## gofmt, go vet and staticcheck.
	@bad=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$')); [ -z "$$bad" ] || { echo "gofmt needed: $$bad"; exit 1; }
	$(GO) vet $(PKGS)
	$(GO) tool staticcheck $(PKGS)
	cd $(CLUSTER) && $(GO) vet ./... && $(STATICCHECK) ./...

demo: deps ## The local cluster with Sluice (meshctl install) and the demo app meshed, traffic flowing; then what to try. Stop with make demo-down.
	$(GO) run ./test/demo/cmd/demo up

demo-down: ## Remove the demo and Sluice (pinned eBPF state included) and stop the local cluster.
	$(GO) run ./test/demo/cmd/demo down

clean: ## Remove build output.
	rm -rf $(BIN)
