# Quick start: `make demo` then `make test`. Both create .venv and install the core and every
# plugin under plugins/ in editable mode first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
# Example backends built from docs/writing-a-backend.md; installed and tested like the plugins.
EXAMPLES := examples/subprocess-backend/pyproject.toml

.PHONY: install demo demo-aws demo-k8s demo-gcp test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(PLUGINS) $(EXAMPLES)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]" $(foreach p,$(PLUGINS) $(EXAMPLES),-e "$(dir $(p))[test]")
	touch $@

demo: install
	$(PY) examples/quickstart.py

demo-aws: install
	$(PY) examples/quickstart_aws.py

demo-k8s: install
	$(PY) examples/quickstart_k8s.py

demo-gcp: install
	$(PY) examples/quickstart_gcp.py

test: install
	$(PY) -m pytest

bench: install
	$(PY) bench/startup.py
	$(PY) bench/aws_calls.py
	$(PY) bench/node_boot.py
	$(PY) bench/gcp_calls.py
	$(PY) bench/k8s_calls.py

clean:
	rm -rf $(VENV) build *.egg-info plugins/*/*.egg-info
