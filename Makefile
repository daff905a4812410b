# ebpf-edge-agent — see README.md. Every target provisions itself through dev-setup.
VENV   := .venv
PY     := $(VENV)/bin/python
AGENT  := $(VENV)/bin/ebpf-edge-agent
PYTEST_ARGS ?=

.PHONY: docs dev-setup test test-unit test-bpf smoke-test check-kernel run clean test-kernels bench image deploy undeploy test-deploy stress-check experiment

dev-setup:
	@./scripts/dev-setup.sh

test: dev-setup
	$(PY) -m pytest -ra $(PYTEST_ARGS)

test-unit: dev-setup
	$(PY) -m pytest -ra tests/unit $(PYTEST_ARGS)

test-bpf: dev-setup
	$(PY) -m pytest -ra tests/bpf $(PYTEST_ARGS)

smoke-test: dev-setup
	$(AGENT) smoke-test

check-kernel: dev-setup
	$(AGENT) check-kernel

# the agent in the foreground with its embedded defaults (standalone: no Kubernetes needed)
run: dev-setup
	$(AGENT) run $(RUN_ARGS)

# numbers, not tests: one table, also written to bench/results/latest.json (about 10 minutes)
bench:
	@DEV_SETUP_BENCH=1 ./scripts/dev-setup.sh
	$(PY) -m bench.run --json bench/results/latest.json

# seed 001's experiment: scenarios S1-S5 against the real agent, then the placement replay
# through the real extender (one run ~12 min; RUNS=N for more; EXPERIMENT_ARGS e.g.
# --scenario-seconds 20). docs/experiment.md
RUNS ?= 1
EXPERIMENT_ARGS ?=
experiment:
	@DEV_SETUP_EXPERIMENT=1 ./scripts/dev-setup.sh
	$(PY) -m experiment --runs $(RUNS) $(EXPERIMENT_ARGS)

# make test 5 times beside stress-ng, then the load-sensitive tests 20 times each (~45 min)
stress-check: dev-setup
	./scripts/stress-check.sh

# boots Debian's 5.10, 6.1 and 6.12 kernels in QEMU and runs the probes there (not part of make test)
test-kernels: dev-setup
	./scripts/kernel-matrix/run.sh

# docs/metrics.md from the exporters' declarations and the schema (a unit test keeps it current)
docs: dev-setup
	$(PY) scripts/gen-docs.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# --- deployment (docs/deploy.md) ---------------------------------------------------------------
IMAGE ?= localhost/ebpf-edge-agent:dev

# the container image with podman (installs podman/buildah/runc/debootstrap, caches the base)
image:
	IMAGE=$(IMAGE) ./scripts/image.sh build

# apply / remove the rendered manifests on the cluster kubectl points at (docs/deploy.md).
# KUSTOMIZATION=manifests/overlays/capacity for the capacity overlay.
KUSTOMIZATION ?= manifests/

deploy:
	kubectl apply -k manifests/namespace
	kubectl apply -k $(KUSTOMIZATION)

# the agent's objects, older generated ConfigMaps and an advertised extended resource; never
# the namespace
undeploy:
	KUSTOMIZATION=$(KUSTOMIZATION) ./scripts/undeploy.sh

# manifests, rules, PromQL in the lab and the image test (also part of make test; ~1 min)
test-deploy: dev-setup
	$(PY) -m pytest -ra tests/deploy $(PYTEST_ARGS)
