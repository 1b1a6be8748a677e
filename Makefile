PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -c constraints.txt
export HF_HUB_OFFLINE := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test install install-test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[all]'
	# onnx2tf and tf-keras pin versions that conflict with ours (tf-keras needs `tensorflow`,
	# we have tensorflow-cpu): installed without their declared deps; the real ones are in the tf extra.
	$(PIP) --no-deps onnx2tf==1.29.24 tf-keras==2.21.0
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[all,test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/modelport demo

test: install-test
	$(BIN)/python -m pytest -n 2 -q

bench: install-test
	$(BIN)/python benchmarks/conversion_and_latency.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
