# Two commands do everything on a fresh machine:
#   make pipeline   environment + data + J1..J5 through papermill (full profile on a CUDA GPU, smoke otherwise)
#   make test       environment + data + unit tests + nbval on every notebook
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
SHARED ?= ../shared/data
PROFILE ?= auto

.PHONY: pipeline test env data clean-smoke

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

env: $(VENV)/.installed

# CIFAR-10: rebuilt from the shared JPEG copy when it is there, else downloaded (needs internet).
data/cifar-10-batches-py/test_batch: | env
	if [ -f $(SHARED)/make_cifar10_batches.py ]; then $(PY) -m fastcifar.data --from-shared $(SHARED); \
	else $(PY) -m fastcifar.data --download cifar10; fi

data: data/cifar-10-batches-py/test_batch

pipeline: env data
	$(PY) -m fastcifar.pipeline --profile $(PROFILE)

test: env data
	$(PY) -m pytest tests
	$(PY) -m pytest --nbval-lax notebooks -p no:cacheprovider

clean-smoke:
	rm -rf outputs/smoke
