# One command each: `make test` (set up + run every test) and `make workbook` (set up + open the notebooks).
# Set-up makes .venv/ with the CPU build of torch (constraints/cpu.txt); see README for GPU machines.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP_CONSTRAINTS ?= constraints/cpu.txt

# Nothing here may reach a model hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test workbook figures slides book benchmark lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(PIP_CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(PIP_CONSTRAINTS) -e ".[dev]"
	touch $@

test: setup   # also installs Debian's chromium for the browser test when it is missing
	bash scripts/ensure_chromium.sh
	$(VENV)/bin/ruff check --no-cache bagel_lite tests benchmarks scripts conftest.py
	$(PY) -m pytest $(PYTEST_ARGS)

workbook: setup
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

figures: setup
	$(PY) scripts/make_figures.py

slides: setup  # make slides NB=06
	$(PY) scripts/make_slides.py $(NB)

book: setup   # executes every notebook and writes a static site: build/book/index.html
	$(PY) scripts/build_book.py

benchmark: setup
	$(PY) benchmarks/inference_speed.py

lint: setup
	$(VENV)/bin/ruff check --no-cache bagel_lite tests benchmarks scripts conftest.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
