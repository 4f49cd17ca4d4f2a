# make demo / make test: create .venv if missing, install the project into it, run.
# Idempotent: the install is redone only when pyproject.toml changes (or the venv is new).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.perturbkit-installed
PYTEST_ARGS ?= -n 2

.PHONY: all demo test install models clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned (torch==2.13.0), so pip takes the local CPU wheel.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/perturbkit demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Retrain the bundled models (needs scikit-learn; byte-for-byte reproducible).
models: $(STAMP)
	$(PY) -m pip install -e '.[test,train]'
	$(PY) -m perturbkit.models.train_digits
	$(PY) -m perturbkit.models.train_digits --adv
	$(PY) -m perturbkit.models.train_digits --noise
	$(PY) -m perturbkit.models.train_transformer

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
