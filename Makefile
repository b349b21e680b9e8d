# boldstream — the two commands a new machine needs:
#   make demo   build, then run the simulator feeding the daemon (no arguments, no network)
#   make test   the whole test suite (format, lints, unit + integration tests)
# and, for the figures in the README:
#   make bench  realign, GLM, decode and DICOM benchmarks next to SimpleITK, nilearn, nibabel
#               and dcm2niix (needs Python 3 + PyPI; dcm2niix from your package manager)
#   make ort-gpu  swap in PyPI's onnxruntime-gpu (CUDA/TensorRT) on a GPU machine
#
# ONNX Runtime comes from PyPI's wheel into .venv (ort's load-dynamic); the
# binary finds .venv/lib/python3*/site-packages/onnxruntime/capi by itself.

CARGO ?= cargo
PYTHON ?= python3
VENV := .venv

.PHONY: demo test bench parity-venv ort ort-gpu clean

ORT_VERSION := 1.31.1
ORT_STAMP := $(VENV)/.onnxruntime-$(ORT_VERSION)

demo: ort
	$(CARGO) run --release --quiet -- demo

test: ort
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) test --release

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The wheel alone: the daemon needs its shared library, not its Python deps.
$(ORT_STAMP): $(VENV)/bin/python onnx/requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r onnx/requirements.txt
	touch $@

ort: $(ORT_STAMP)

ort-gpu: $(VENV)/bin/python
	$(VENV)/bin/pip uninstall --quiet -y onnxruntime || true
	$(VENV)/bin/pip install --quiet --no-deps onnxruntime-gpu==$(ORT_VERSION)
	touch $(ORT_STAMP)

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
	$(CARGO) bench --bench dicom
	$(VENV)/bin/python tests/parity/dicom_compare.py

clean:
	$(CARGO) clean
	rm -rf $(VENV)
