"""Every chapter of the book executes in smoke mode (tiny data), as CI requires.

The full build (`make book`) executes them on the default data; here each
chapter's notebook runs with CCCL_SMOKE=1 and a temporary data folder.
"""

import os
from pathlib import Path

import jupytext
import nbclient
import pytest
import yaml

from helpers import notebook_chapters

ROOT = Path(__file__).resolve().parent.parent
# Each chapter runs as a notebook (a kernel, tiny data, MiniLM): minutes in all.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smoke_env(tmp_path_factory):
    data = tmp_path_factory.mktemp("book-data")
    old = {k: os.environ.get(k) for k in ("CCCL_SMOKE", "CCCL_DATA", "HF_HUB_OFFLINE")}
    os.environ.update(CCCL_SMOKE="1", CCCL_DATA=str(data), HF_HUB_OFFLINE="1")
    yield data
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("chapter", notebook_chapters(), ids=lambda p: p.stem)
def test_chapter_executes_in_smoke_mode(chapter, smoke_env):
    nb = jupytext.read(chapter)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(chapter.parent)}}).execute()
