# boldstream — the two commands a new machine needs:
#   make demo   build, then run the simulator feeding the daemon (no arguments, no network)
#   make test   the whole test suite (format, lints, unit + integration tests,
#               the dashboard in headless Chromium: `make browser-deps` first)
# and, for the figures in the README:
#   make bench  realign, GLM, decode and DICOM benchmarks next to SimpleITK, nilearn, nibabel
#               and dcm2niix (needs Python 3 + PyPI; dcm2niix from your package manager),
#               and the feedback protocol under load (1 and 10 clients, 4x real time)
#   make ort-gpu  swap in PyPI's onnxruntime-gpu (CUDA/TensorRT) on a GPU machine
#
# ONNX Runtime comes from PyPI's wheel into .venv (ort's load-dynamic); the
# binary finds .venv/lib/python3*/site-packages/onnxruntime/capi by itself.

CARGO ?= cargo
PYTHON ?= python3
VENV := .venv

.PHONY: demo test bench parity-venv parity-ci ort ort-gpu browser-deps clean

ORT_VERSION := 1.31.1
ORT_STAMP := $(VENV)/.onnxruntime-$(ORT_VERSION)

demo: ort
	$(CARGO) run --release --quiet -- demo

test: ort browser-deps parity-ci
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	# the daemon alone, without the simulator, demo and report (feature `tools`)
	$(CARGO) clippy --release --no-default-features --lib --bins -- -D warnings
	$(CARGO) test --release

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The wheel alone: the daemon needs its shared library, not its Python deps.
$(ORT_STAMP): $(VENV)/bin/python onnx/requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r onnx/requirements.txt
	touch $@

ort: $(ORT_STAMP)

# The dashboard's browser test (tests/dashboard_browser.rs) drives Debian's
# chromium through playwright-core (pinned in tests/browser/package-lock.json).
# Installed here when missing; installing chromium needs root (CI is root).
BROWSER_DIR := tests/browser
CHROMIUM := /usr/bin/chromium
APT := DEBIAN_FRONTEND=noninteractive apt-get -q -y

browser-deps: $(BROWSER_DIR)/node_modules/.package-lock.json
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "$(CHROMIUM) is missing: install Debian's chromium package (as root: apt-get install chromium)"; exit 1; \
	  fi; \
	  echo "installing chromium (apt-get)"; \
	  $(APT) update && $(APT) install chromium; \
	fi

# npm ci leaves node_modules/.package-lock.json: reinstalled only when the
# lock file changes.
$(BROWSER_DIR)/node_modules/.package-lock.json: $(BROWSER_DIR)/package-lock.json
	@if ! command -v npm >/dev/null; then \
	  if [ "$$(id -u)" != 0 ]; then echo "npm is missing: install Node.js 20 or later"; exit 1; fi; \
	  $(APT) update && $(APT) install nodejs npm; \
	fi
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund

ort-gpu: $(VENV)/bin/python
	$(VENV)/bin/pip uninstall --quiet -y onnxruntime || true
	$(VENV)/bin/pip install --quiet --no-deps onnxruntime-gpu==$(ORT_VERSION)
	touch $(ORT_STAMP)

# numpy, pandas and nilearn for the parity tests CI runs (tests/bids_sink.rs).
$(VENV)/.parity-ci: $(VENV)/bin/python tests/parity/requirements-ci.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/parity/requirements-ci.txt
	touch $@

parity-ci: $(VENV)/.parity-ci

$(VENV)/.parity: $(VENV)/bin/python tests/parity/requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/parity/requirements.txt
	touch $@

parity-venv: $(VENV)/.parity ort

bench: parity-venv
	$(CARGO) build --release --quiet
	$(CARGO) bench --bench realign
	$(VENV)/bin/python tests/parity/realign_compare.py --boldstream target/release/boldstream
	$(CARGO) bench --bench glm
	$(VENV)/bin/python tests/parity/glm_compare.py --boldstream target/release/boldstream
	$(VENV)/bin/python onnx/bench_graphs.py target/bench-models
	$(CARGO) bench --bench decode -- target/bench-models/model target/bench-models/subject 5
	$(VENV)/bin/python tests/parity/decode_reference.py target/bench-models/model target/bench-models/subject --trials 5
	$(CARGO) bench --bench serve
	$(CARGO) bench --bench dicom
	$(VENV)/bin/python tests/parity/dicom_compare.py

clean:
	$(CARGO) clean
	rm -rf $(VENV) $(BROWSER_DIR)/node_modules
