# boldstream — the two commands a new machine needs:
#   make demo   build, then run the simulator feeding the daemon (no arguments, no network)
#   make test   the whole test suite (format, lints, unit + integration tests)
# and, for the figures in the README:
#   make bench  realign and GLM benchmarks next to SimpleITK and nilearn (needs Python 3 + PyPI)

CARGO ?= cargo
PYTHON ?= python3
VENV := .venv

.PHONY: demo test bench parity-venv clean

demo:
	$(CARGO) run --release --quiet -- demo

test:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) test --release

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r tests/parity/requirements.txt

parity-venv: $(VENV)/bin/python

bench: parity-venv
	$(CARGO) build --release --quiet
	$(CARGO) bench --bench realign
	$(VENV)/bin/python tests/parity/realign_compare.py --boldstream target/release/boldstream
	$(CARGO) bench --bench glm
	$(VENV)/bin/python tests/parity/glm_compare.py --boldstream target/release/boldstream

clean:
	$(CARGO) clean
	rm -rf $(VENV)
