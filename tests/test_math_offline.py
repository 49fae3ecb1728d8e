"""The built book typesets its equations with no network (issue 26, item 4).

A one-page book is built with the project's own _config.yml (read here, so the
test follows the real configuration; only execution is switched off) and one
page holding inline, display and amsmath equations. Every <script> of the
built page that loads MathJax or KaTeX must be a local file that exists in the
output, and MathJax 3's CHTML fonts, which it loads relative to its own URL
(``[mathjax]/output/chtml/fonts/woff-v2``), must be there beside it: a CDN
URL would leave a downloaded book or an offline classroom with raw LaTeX.

If the real book has been built (``_build/html``, by ``make book``), its pages
are checked the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MATH_WORDS = ("mathjax", "katex")

PAGE = r"""# Equations

Inline $s(I, T) = \cos(v_I, v_T)$ and a display equation:

$$
\mathcal{L} = \sum_{\hat T} \left[\alpha - s(I, T) + s(I, \hat T)\right]_+
$$ (eq-hinge)

```{math}
:label: eq-softmax
p_i = \frac{e^{z_i}}{\sum_j e^{z_j}}
```

\begin{align}
a &= b + c \\
d &= \boldsymbol{e}
\end{align}
"""


class _Scripts(HTMLParser):
    """Collects each <script>'s src (None for an inline one) and its text."""

    def __init__(self):
        super().__init__()
        self.scripts: list[tuple[str | None, str]] = []
        self._open: list | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self._open = [dict(attrs).get("src"), ""]

    def handle_data(self, data):
        if self._open is not None:
            self._open[1] += data

    def handle_endtag(self, tag):
        if tag == "script" and self._open is not None:
            self.scripts.append((self._open[0], self._open[1]))
            self._open = None


def math_problems(html_dir: Path, page: Path) -> tuple[list[Path], list[str]]:
    """The local math script files ``page`` loads, and what is wrong with them.

    A math script is one whose src names MathJax or KaTeX. Wrong: a src with a
    scheme or a protocol-relative ``//host`` (the network), a local src with no
    file behind it, an inline MathJax configuration that names a URL (e.g. a
    CDN fontURL).
    """
    parser = _Scripts()
    parser.feed(page.read_text(encoding="utf-8"))
    name = page.relative_to(html_dir)
    files, problems = [], []
    for src, text in parser.scripts:
        if src is None:
            if "MathJax" in text and re.search(r"https?://|//[\w.-]+\.\w+/", text):
                problems.append(f"{name}: an inline MathJax configuration names a URL: {text.strip()[:120]}")
            continue
        if not any(w in src.lower() for w in MATH_WORDS):
            continue
        parts = urlsplit(src)
        if parts.scheme or parts.netloc:
            problems.append(f"{name} loads math from the network: {src}")
            continue
        local = (page.parent / unquote(parts.path)).resolve()
        if not local.is_file():
            problems.append(f"{name} loads {src}, which is not in the build output")
            continue
        files.append(local)
    return files, problems


def check_html(html_dir: Path) -> int:
    """Assert every page of ``html_dir`` loads math only from local files;
    returns how many pages load math (the caller wants some)."""
    pages_with_math, problems, scripts = 0, [], set()
    for page in sorted(html_dir.rglob("*.html")):
        if "_static" in page.relative_to(html_dir).parts:
            continue
        files, found = math_problems(html_dir, page)
        pages_with_math += bool(files or found)
        problems += found
        scripts.update(files)
    assert not problems, "\n".join(problems)
    for script in scripts:
        if "mathjax" not in script.name.lower() and "mathjax" not in str(script.parent).lower():
            continue
        # The font files MathJax's CHTML output declares, read from the script
        # itself, must exist where MathJax 3 looks: beside the script.
        fonts = set(re.findall(r"%%URL%%/([\w-]+\.woff2?)", script.read_text(encoding="utf-8", errors="replace")))
        if not fonts:
            continue  # a component without CHTML output (e.g. the SVG one)
        font_dir = script.parent / "output" / "chtml" / "fonts" / "woff-v2"
        missing = sorted(f for f in fonts if not (font_dir / f).is_file())
        assert not missing, f"{script.name} needs {len(missing)} fonts missing from {font_dir}: {missing[:5]}"
    return pages_with_math


def project_config() -> dict:
    """The project's _config.yml with execution off (nothing here needs a kernel)."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    return config


def copy_local_files(config: dict, dest: Path) -> None:
    """Copy what the configuration names by a path (the bibliography, the
    folders of local Sphinx extensions) to the same place under ``dest``."""
    for bib in config.get("bibtex_bibfiles") or []:
        (dest / bib).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / bib, dest / bib)
    for folder in ((config.get("sphinx") or {}).get("local_extensions") or {}).values():
        if not (dest / folder).exists():
            shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))


def test_project_config_does_not_load_mathjax_from_a_url():
    """Fast check of the configuration itself: a mathjax_path or katex URL set
    in _config.yml would send every reader to the network."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    sphinx_config = (config.get("sphinx") or {}).get("config") or {}
    for key, value in sphinx_config.items():
        if any(w in key.lower() for w in MATH_WORDS) and isinstance(value, str):
            assert not urlsplit(value).scheme, f"_config.yml sphinx.config.{key} is a URL: {value}"


def test_tiny_book_loads_math_from_local_files(tmp_path):
    pytest.importorskip("jupyter_book", reason="jupyter-book is in the [book] extra (make setup installs it)")
    jb = Path(sys.executable).with_name("jupyter-book")
    if not jb.exists():
        jb = Path(shutil.which("jupyter-book") or "jupyter-book")
    src = tmp_path / "book"
    src.mkdir()
    config = project_config()
    copy_local_files(config, src)
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (src / "_toc.yml").write_text("format: jb-book\nroot: index\n")
    (src / "index.md").write_text(PAGE)
    # -W -n as in `make book`: the offline math must not cost a warning either.
    run = subprocess.run([str(jb), "build", str(src), "-W", "-n", "--keep-going"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"jupyter-book build failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    html = src / "_build" / "html"
    assert check_html(html) >= 1, "the page with equations loads no math script at all"


def test_built_book_loads_math_from_local_files():
    html = ROOT / "_build" / "html"
    if not (html / "index.html").exists():
        pytest.skip("no built book in _build/html (make book builds it)")
    assert check_html(html) >= 1, "no page of _build/html loads a math script"


# ---- a chapter in a real browser with the network off (opt-in: needs Chromium) ----

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Headless, and no way out: every host name resolves to nothing and every
# request goes to a proxy on a closed port, so only file:// loads succeed.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
                  "--hide-scrollbars", "--window-size=1600,7000", "--virtual-time-budget=20000"]


def chromium(url: str, profile: Path, *args: str) -> str:
    run = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"chromium failed ({run.returncode}): {run.stderr[-2000:]}"
    return run.stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_chapter_5_typesets_its_equations_offline_in_chromium(tmp_path):
    """Chapter 5 alone (execution off), built with the project's _config.yml,
    opened from disk by headless Chromium with the network blocked: every math
    element of the page must become a MathJax container, with no MathJax error.
    Set CCCL_MATH_SCREENSHOT=PATH.png to keep a screenshot of the page."""
    pytest.importorskip("jupyter_book", reason="jupyter-book is in the [book] extra (make setup installs it)")
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    chapter = next((c for c in chapters if Path(c).name.startswith("05_")), None)
    assert chapter, "_toc.yml lists no chapter 05_*"
    src = tmp_path / "book"
    shutil.copytree(ROOT / Path(chapter).parent, src / Path(chapter).parent,
                    ignore=shutil.ignore_patterns("*.ipynb", "_build"))
    # The chapters' solutions are {include}d from the package.
    shutil.copytree(ROOT / "cccl_lite" / "solutions", src / "cccl_lite" / "solutions")
    config = project_config()
    copy_local_files(config, src)
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (src / "_toc.yml").write_text(f"format: jb-book\nroot: {chapter}\n")
    jb = Path(sys.executable).with_name("jupyter-book")
    # No -W: alone, the chapter's {ref}s to other chapters and its unexecuted
    # glue warn; the equations are what is checked here.
    run = subprocess.run([str(jb if jb.exists() else "jupyter-book"), "build", str(src)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"jupyter-book build failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    html_dir = src / "_build" / "html"
    page = html_dir / f"{chapter}.html"
    check_html(html_dir)
    math_elements = len(re.findall(r'class="math[ "]', page.read_text(encoding="utf-8")))
    assert math_elements > 10, f"{page.name}: only {math_elements} math elements; is this the chapter?"

    dom = chromium(page.as_uri(), tmp_path / "profile", "--dump-dom")
    typeset = dom.count("<mjx-container")
    errors = dom.count("<mjx-merror")
    assert typeset >= math_elements, (
        f"{page.name}: MathJax typeset {typeset} of {math_elements} equations with the network off")
    assert errors == 0, f"{page.name}: {errors} equations typeset as MathJax errors"
    shot = os.environ.get("CCCL_MATH_SCREENSHOT")
    if shot:
        chromium(page.as_uri(), tmp_path / "profile", f"--screenshot={Path(shot).resolve()}")
        assert Path(shot).is_file(), f"chromium wrote no screenshot to {shot}"
