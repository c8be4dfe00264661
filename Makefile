# Two commands do everything on a fresh machine:
#   make pipeline   environment + data + J1..J5 through papermill (full profile on a CUDA GPU, smoke otherwise)
#   make test       environment + data + unit tests + nbval on every notebook
# and one for a CUDA machine (no environment built, the package need not be installed):
#   make test-gpu PY=python3   GPU tests; report in outputs/gpu_tests/report.json + report.xml
PYTHON ?= python3
VENV   ?= .venv
PY     ?= $(VENV)/bin/python
SHARED ?= ../shared/data
PROFILE ?= auto
# Pinned versions of the committed evidence; `make CONSTRAINTS=` installs the newest instead.
CONSTRAINTS ?= constraints.txt
EXTRAS ?= all
GPU_REPORT_DIR ?= outputs/gpu_tests

.PHONY: pipeline test test-gpu env data clean-smoke

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip 'setuptools>=70.1'  # builds wheels without the wheel package
	$(VENV)/bin/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[$(EXTRAS)]'
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

# Runs from the source tree (PYTHONPATH=lib) with whatever Python is given (needs torch and pytest):
# the GPU host has no virtualenv. Fails when no CUDA device is visible or a GPU test fails.
test-gpu:
	PYTHONPATH=lib$${PYTHONPATH:+:$$PYTHONPATH} $(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'make test-gpu: no CUDA device visible; run it on a CUDA machine')"
	mkdir -p $(GPU_REPORT_DIR)
	PYTHONPATH=lib$${PYTHONPATH:+:$$PYTHONPATH} $(PY) -m pytest -m gpu tests -p no:cacheprovider --junitxml=$(GPU_REPORT_DIR)/report.xml --gpu-report=$(GPU_REPORT_DIR)/report.json

clean-smoke:
	rm -rf outputs/smoke
