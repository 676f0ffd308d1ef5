# runnel: the README's two commands are `make demo` and `make test`.

CARGO    ?= cargo
BIN      := target/release/runnel
DEV_PKI  := certs/dev
DEMO_DIR := $(CURDIR)/target/demo
ADDR     := 127.0.0.1:50051

.PHONY: all build static demo test unit interop interop-node hostile-h2 container bench soak deps clean vmtest vmtest-systemd fuzz

all: build

build:
	$(CARGO) build --release

# A static-pie musl binary to copy to hosts with nothing installed: target/x86_64-unknown-linux-musl/release/runnel.
MUSL := x86_64-unknown-linux-musl
static:
	@command -v x86_64-linux-musl-gcc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools; }
	@rustup target list --installed | grep -qx $(MUSL) || rustup target add $(MUSL)
	CC_x86_64_unknown_linux_musl=x86_64-linux-musl-gcc $(CARGO) build --release --target $(MUSL)
	@file target/$(MUSL)/release/runnel; ls -l target/$(MUSL)/release/runnel

# Makes certs/dev/{ca,server,demo}.{crt,key} once; later runs reuse them.
$(DEV_PKI)/ca.crt: | build
	mkdir -p $(DEV_PKI)
	$(BIN) certs ca --out $(DEV_PKI)/ca
	$(BIN) certs server --ca $(DEV_PKI)/ca --out $(DEV_PKI)/server --dns localhost --ip 127.0.0.1
	$(BIN) certs client --ca $(DEV_PKI)/ca --name demo --out $(DEV_PKI)/demo

# Starts a server, runs a job through the client, streams its output, shows its status, stops the server.
demo: build $(DEV_PKI)/ca.crt
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	@$(BIN) server --listen $(ADDR) --cert $(DEV_PKI)/server.crt --key $(DEV_PKI)/server.key \
	    --client-ca $(DEV_PKI)/ca.crt --state-dir $(DEMO_DIR)/state 2> $(DEMO_DIR)/server.log & echo $$! > $(DEMO_DIR)/server.pid
	@for i in $$(seq 100); do grep -q 'listening on' $(DEMO_DIR)/server.log && break; \
	  kill -0 $$(cat $(DEMO_DIR)/server.pid) 2>/dev/null || { echo "error: the server did not start:" >&2; cat $(DEMO_DIR)/server.log >&2; exit 1; }; \
	  sleep 0.1; done; \
	  grep -q 'listening on' $(DEMO_DIR)/server.log || { echo "error: the server did not start within 10 s (log: $(DEMO_DIR)/server.log)" >&2; \
	    kill -TERM $$(cat $(DEMO_DIR)/server.pid); exit 1; }; \
	  echo "server listening on $(ADDR) (its log, apart: $(DEMO_DIR)/server.log)"
	@export RUNNEL_SERVER=$(ADDR) RUNNEL_CERT=$(DEV_PKI)/demo.crt RUNNEL_KEY=$(DEV_PKI)/demo.key RUNNEL_CA=$(DEV_PKI)/ca.crt; \
	  set -e; trap 'kill -TERM $$(cat $(DEMO_DIR)/server.pid) 2>/dev/null' EXIT; \
	  echo '$$ runnel client run -- sh -c "..."'; \
	  code=0; $(BIN) client run -- sh -c 'for i in 1 2 3; do echo "tick $$i"; sleep 0.3; done; echo "to stderr" >&2; exit 3' \
	    || code=$$?; test $$code -eq 3 || { echo "error: expected the job's exit code 3, got $$code" >&2; exit 1; }; \
	  echo "(job exit code 3, as expected)"; \
	  echo '$$ runnel client start -- uname -a'; ID=$$($(BIN) client start -- uname -a); echo $$ID; \
	  echo '$$ runnel client wait ID'; $(BIN) client wait $$ID; \
	  echo '$$ runnel client logs ID'; $(BIN) client logs $$ID; \
	  echo '$$ runnel client status ID'; $(BIN) client status $$ID; \
	  echo '$$ runnel client list'; $(BIN) client list; \
	  trap - EXIT
	@kill -TERM $$(cat $(DEMO_DIR)/server.pid); while kill -0 $$(cat $(DEMO_DIR)/server.pid) 2>/dev/null; do sleep 0.1; done
	@echo "server stopped; it keeps the jobs' history in $(DEMO_DIR)/state: $$(ls $(DEMO_DIR)/state | tr '\n' ' ')(with --ephemeral, nothing)"

# Everything the tests need that a fresh Debian 12 root machine lacks: Python's venv module, procps (`kill`),
# Node.js and npm (the grpc-js interop test), podman (the container image test), zsh and fish (completions),
# mmdebstrap (the systemd guest's root file system).
deps:
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found: install Rust (rustup) first" >&2; exit 1; }
	@python3 -c 'import ensurepip, venv' 2>/dev/null && command -v kill >/dev/null && command -v sha256sum >/dev/null \
	  && command -v openssl >/dev/null || { \
	  echo "installing python3-venv, procps and openssl"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv procps coreutils openssl; }
	@command -v mkfs.ext4 >/dev/null && command -v fsfreeze >/dev/null || { \
	  echo "installing e2fsprogs and util-linux (the frozen state directory test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq e2fsprogs util-linux; }
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "installing nodejs and npm"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	@command -v zsh >/dev/null && command -v fish >/dev/null || { \
	  echo "installing zsh and fish (the completion tests run the real shells)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zsh fish; }
	@command -v podman >/dev/null || { \
	  echo "installing podman (the container image test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman; }
	@command -v mmdebstrap >/dev/null || { \
	  echo "installing mmdebstrap (the systemd guest's root file system)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap; }

# Every test: unit and integration tests, the grpcio and grpc-js interop tests, the cgroup v2 guest test (QEMU),
# the systemd unit in a guest with systemd as PID 1 (QEMU), and the container image.
test: deps unit interop interop-node hostile-h2 vmtest vmtest-systemd container

unit:
	$(CARGO) test --lib --bins --tests

interop: deps
	$(CARGO) build
	bash tests/interop/run.sh target/debug/runnel

# The same server driven by a second, independent client stack: gRPC's Node implementation (@grpc/grpc-js, the
# versions pinned in tests/interop_node/package-lock.json), with Node's built-in test runner.
interop-node: deps
	$(CARGO) build
	bash tests/interop_node/run.sh target/debug/runnel

# Hostile HTTP/2 clients, frame by frame (Python's h2): floods, resets, bombs, never-read followers, and the
# memory each may make the server hold.
hostile-h2: deps
	$(CARGO) build
	bash tests/interop/run.sh target/debug/runnel tests/hostile_h2

# Coverage-guided fuzzing of every parser of untrusted input (fuzz/, cargo-fuzz on the nightly toolchain):
# each target for FUZZ_SECONDS (default 60) or FUZZ_RUNS executions, FUZZ_TARGETS to choose. Installs cargo-fuzz
# if it is missing.
fuzz:
	bash fuzz/run.sh

bench:
	$(CARGO) bench --bench perf

# The soak (issue 15): SOAK_MINUTES (default 10) of a mixed workload from 50 connections against the release server; fails on any byte that differs from what a job wrote, or on descriptors, memory, processes or state directory growing.
soak: deps
	$(CARGO) bench --bench soak

# Boots a cgroup v2 kernel in QEMU with the static binary and checks that limits, stops and cleanups hold
# (tests/vm/run.sh; never touches the host's cgroups). RUNNEL_REQUIRE_VM=1 where the VM must be available.
vmtest: static
	bash tests/vm/run.sh target/$(MUSL)/release/runnel

# Boots a minimal Debian 12 with systemd as PID 1 in QEMU, installs deploy/runnel.service as the README says and
# checks enable, readiness (Type=notify), jobs and their limits, the journal, a clean stop and restarts
# (tests/vm/systemd.sh; the root file system is built once with mmdebstrap and cached). RUNNEL_REQUIRE_VM=1 as above.
vmtest-systemd: deps static
	bash tests/vm/systemd.sh target/$(MUSL)/release/runnel

# deploy/Containerfile built with podman and run without a cgroup; the binary inside serves a job to the host.
container: deps static
	bash tests/deploy/container.sh target/$(MUSL)/release/runnel

clean:
	$(CARGO) clean
	rm -rf .venv tests/interop/generated tests/interop_node/node_modules
