# `make demo` and `make test` set themselves up in .venv (CPU torch from the local wheel cache when present).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup test demo clean configs

$(VENV)/.installed: setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip show torch >/dev/null 2>&1 || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest tests -q

demo: setup
	VENV=$(VENV) bash scripts/demo.sh

clean:
	rm -rf out/demo

# configs/<recipe>.yaml is generated from pretrain/<recipe>.py (tests/test_configs.py fails when they drift apart)
configs: setup
	for r in debug microllama tinyllama smol_llama; do $(PY) scripts/write_config.py $$r; done
