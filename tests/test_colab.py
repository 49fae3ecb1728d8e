"""The Colab edition (cccl_lite.book.editions): colab/NN_name.ipynb, made from the
book's sources by the converter the student edition uses, is what the book's
launch buttons open. It must be in sync with the sources (regenerated, it is
byte-identical), hold no MyST syntax, show its figures when uploaded alone,
install the configured repository, and follow a change of the repository's
URL in _config.yml everywhere (install cells, book links, launch buttons)."""

from __future__ import annotations

import base64
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import yaml

from cccl_lite.cli import main as cli_main
from cccl_lite.book.editions import (book_page_url, colab_url, make_colab_edition, make_edition,
                                     repository, sync_repository_url)
from cccl_lite.book.student import myst_to_markdown

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
COLAB = ROOT / "colab"
# MyST that must not reach a notebook: a directive fence, a role, a target.
MYST = re.compile(r"```+\{|:::+\{|\{[a-z][\w:-]*\}`|^\([\w-]+\)=\s*$", flags=re.M)
INSTALL = re.compile(r'pip install[^\n]*"cccl_lite(?:\[[^\]]*\])? @ git\+([^"\s]+)"')


def config_url() -> str:
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("colab")
    return out, make_colab_edition(out, BOOK)


def notebooks(folder: Path) -> dict[str, nbformat.NotebookNode]:
    return {p.name: nbformat.read(p, as_version=4) for p in sorted(folder.glob("*.ipynb"))}


def markdown(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_colab_folder_is_in_sync_with_the_book(regenerated):
    out, paths = regenerated
    committed = sorted(p.name for p in COLAB.glob("*.ipynb"))
    assert committed == sorted(p.name for p in paths), \
        "colab/ is out of date: run `make notebooks` (or python -m cccl_lite colab-edition --overwrite)"
    for path in paths:
        assert (COLAB / path.name).read_bytes() == path.read_bytes(), \
            f"colab/{path.name} differs from its source: run `make notebooks`"


def test_one_notebook_per_page_with_code(regenerated):
    _, paths = regenerated
    pages = [p.stem for p in sorted(BOOK.glob("*.md"))
             if "jupytext" in p.read_text()[:400] and "```{code-cell}" in p.read_text()]
    assert sorted(p.stem for p in paths) == sorted(pages)
    assert {f"{n:02d}" for n in range(1, 11)} <= {p.stem[:2] for p in paths}


def test_no_myst_left_and_no_solution(regenerated):
    out, _ = regenerated
    for name, nb in notebooks(out).items():
        nbformat.validate(nb)
        text = markdown(nb)
        assert not MYST.findall(text), (name, MYST.findall(text)[:3])
        for leftover in (":label:", ":class:", "{solution}", "{glue", "```{"):
            assert leftover not in text, (name, leftover)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
        # every exercise of the page is shown, none with its solution
        source = (BOOK / name.replace(".ipynb", ".md")).read_text()
        labels = re.findall(r"^:label: (ex-[\w-]+)$", source, flags=re.M)
        assert re.findall(r"\*\*✍️ Exercise\*\* \((ex-[\w-]+)\)", text) == labels, name
        includes = re.findall(r"\{include\} \.\./cccl_lite/solutions/([\w-]+)\.md", source)
        for label in includes:
            solution = (ROOT / "cccl_lite" / "solutions" / f"{label}.md").read_text()
            longest = max(solution.splitlines(), key=len)
            assert longest.strip() not in "\n".join(c.source for c in nb.cells), (name, label)


def test_figures_are_embedded_not_linked(regenerated):
    # Colab shows neither an SVG data URI nor a cell attachment: a PNG data URI.
    out, _ = regenerated
    pngs = {p.read_bytes(): p.name for p in (BOOK / "figures").glob("*.png")}
    shown = {}
    for name, nb in notebooks(out).items():
        for cell in nb.cells:
            assert "attachments" not in cell, name
            if cell.cell_type != "markdown":
                continue
            for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", cell.source):
                assert target.startswith("data:image/png;base64,"), (name, target[:80])
                shown[name] = pngs[base64.b64decode(target.split(",", 1)[1])]
            assert not re.search(r"<img[^>]+src=[\"'](?!data:image/png|https?:)", cell.source), name
    assert shown == {f"0{n + 2}_{stage}.ipynb": f"architecture-{stage}.png"
                     for n, stage in enumerate(("perceive", "reason", "align", "loss"))}


def test_each_png_is_its_svg_drawn_at_100_dpi():
    # The PNGs the notebooks embed are the book's SVGs again (make_architecture.py):
    # same names, and pixel sizes = the SVG's size in points * 100 / 72.
    svgs = sorted((BOOK / "figures").glob("*.svg"))
    assert svgs and sorted(p.stem for p in (BOOK / "figures").glob("*.png")) == sorted(p.stem for p in svgs)
    for svg in svgs:
        w, h = (float(x) for x in re.search(r'width="([\d.]+)pt" height="([\d.]+)pt"',
                                               svg.read_text()[:2000]).groups())
        png = svg.with_suffix(".png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        pw, ph = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert abs(pw - w * 100 / 72) <= 1 and abs(ph - h * 100 / 72) <= 1, (svg.name, pw, ph, w, h)


def test_every_install_cell_installs_the_configured_repository(regenerated):
    out, _ = regenerated
    url = config_url()
    for name, nb in notebooks(out).items():
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        installs = [u for c in code for u in INSTALL.findall(c)]
        assert installs, f"{name}: no install cell"
        assert set(installs) == {url}, (name, installs)
        first = next(i for i, c in enumerate(code) if "cccl_lite" in c)
        assert INSTALL.search(code[first]), f"{name}: the package is used before it is installed"


def test_links_go_to_the_rendered_book_and_the_bibliography(regenerated):
    out, _ = regenerated
    owner, repo = config_url().removeprefix("https://github.com/").split("/")
    text = markdown(notebooks(out)["05_loss.ipynb"])
    book_links = re.findall(rf"\]\((https://{owner.lower()}\.github\.io/{repo}/[^)]+)\)", text)
    assert any(link.endswith("/book/appendix_readings.html#app-readings") for link in book_links)
    # The paper is cited with its DOI from book/references.bib.
    text = markdown(notebooks(out)["01_task.ipynb"])
    assert re.search(r"\[Liu et al\.(, | \()2024\)?\]\(https://doi\.org/10\.1016/j\.asoc\.2024"
                     r"\.111395\)", text)


def test_url_derivation_by_hand():
    assert book_page_url("https://github.com/Some-One/my_book", "book/02_perceive",
                         "ch-perceive") == \
        "https://some-one.github.io/my_book/book/02_perceive.html#ch-perceive"
    assert book_page_url("https://github.com/a/b", "book/preface") == \
        "https://a.github.io/b/book/preface.html"
    assert colab_url("https://github.com/a/b", "colab/01_task.ipynb", "dev") == \
        "https://colab.research.google.com/github/a/b/blob/dev/colab/01_task.ipynb"


def test_roles_and_includes_by_hand(tmp_path):
    (tmp_path / "part.md").write_text("Included {cite:p}`k1` text.\n")
    cites = {"k1": ("Kipf and Welling", "2017", "https://doi.org/10/x"),
             "k2": ("Lee et al.", "2018", "")}
    titles = {"ch-a": ("01_a", "1. A"), "preface": ("preface", "Preface")}

    def link(page, label):
        return f"https://o.github.io/r/book/{page}.html" + (f"#{label}" if label else "")

    text = ("Gap {glue:text}`gap_rsum:.1f` and {glue}`runs`; {math}`x^2`; "
            "{numref}`ch-a`, {ref}`that <ch-a>`, {doc}`preface`, {eq}`eq-7`; "
            "{term}`CPC`, {download}`the file <../data/x.h5>`; {cite:t}`k2`.\n\n"
            "```{include} part.md\n```\n\n```{include} ../cccl_lite/solutions/nothing.md\n```\n\n"
            "```{glue:figure} rank_map\n:name: fig-rank\n```\n\n"
            "```{margin} Aside\nA *side* note.\n```")
    got = myst_to_markdown(text, titles, cites, link=link, base=tmp_path, note=None)
    assert "Gap `gap_rsum` and `runs`" in got and "$x^2$" in got
    assert "[1. A](https://o.github.io/r/book/01_a.html#ch-a)" in got
    assert "[that](https://o.github.io/r/book/01_a.html#ch-a)" in got
    assert "[Preface](https://o.github.io/r/book/preface.html)" in got
    assert "*(eq-7)*" in got  # an unknown label: its text, no link
    assert "CPC, the file; Lee et al. (2018)." in got
    assert "Included ([Kipf and Welling, 2017](https://doi.org/10/x)) text." in got
    assert "*(`rank_map`: shown by the cell that computes it)*" in got
    assert "> **Aside**\n>\n> A *side* note." in got
    assert not MYST.search(got) and ":name:" not in got, got


def fake_checkout(tmp_path: Path, url: str) -> Path:
    """A copy of the book's sources whose _config.yml names ``url``."""
    root = tmp_path / "checkout"
    (root / "book").mkdir(parents=True)
    for md in BOOK.glob("*.md"):
        shutil.copy(md, root / "book" / md.name)
    shutil.copy(BOOK / "references.bib", root / "book" / "references.bib")
    shutil.copytree(BOOK / "figures", root / "book" / "figures")
    (root / "cccl_lite" / "book").mkdir(parents=True)
    shutil.copy(ROOT / "cccl_lite" / "book" / "notebook.py", root / "cccl_lite" / "book" / "notebook.py")
    config = (ROOT / "_config.yml").read_text()
    assert config.count(config_url()) == 1
    (root / "_config.yml").write_text(config.replace(config_url(), url))
    return root


def test_changing_the_url_in_config_changes_every_install_cell_and_link(tmp_path):
    fork = "https://github.com/someone-else/fork_of_book"
    root = fake_checkout(tmp_path, fork)
    assert repository(root) == (fork, "main")
    paths = make_colab_edition(None, root / "book")
    assert all(p.parent == root / "colab" for p in paths)
    old_owner, old_repo = config_url().removeprefix("https://github.com/").split("/")
    for path in paths:
        text = path.read_text()
        assert old_owner not in text.lower(), path.name  # no install cell or link left behind
        nb = nbformat.read(path, as_version=4)
        installs = [u for c in nb.cells if c.cell_type == "code" for u in INSTALL.findall(c.source)]
        assert installs and set(installs) == {fork}, path.name
    links = re.findall(r"https://[\w.-]+\.github\.io/[\w.-]+/", "".join(p.read_text() for p in paths))
    assert set(links) == {"https://someone-else.github.io/fork_of_book/"}
    # The launch button of the rebuilt book follows the same URL (book/_ext).
    assert launch_url(root, "book/02_perceive") == \
        "https://colab.research.google.com/github/someone-else/fork_of_book/blob/main/colab/02_perceive.ipynb"


def test_one_step_publishing_writes_the_url_into_the_sources(tmp_path, capsys):
    # `make notebooks` runs colab-edition --sync-url: a new URL in _config.yml
    # reaches the pages' install cells (which the built book shows) and
    # cccl_lite.book.notebook.REPOSITORY, and nothing else in those files changes.
    fork = "https://github.com/someone-else/fork_of_book"
    root = fake_checkout(tmp_path, fork)
    assert cli_main(["colab-edition", "--book", str(root / "book"), "--sync-url",
                     "--chapter", "02_perceive"]) == 0
    updated = {Path(line.split(":")[0]).name for line in capsys.readouterr().out.splitlines()
               if line.endswith("repository URL updated")}
    pages = {p.name for p in BOOK.glob("*.md") if INSTALL.search(p.read_text())}
    assert len(pages) >= 10 and updated == pages | {"notebook.py"}
    for name in pages:
        text = (root / "book" / name).read_text()
        assert set(INSTALL.findall(text)) == {fork}, name
        assert text.replace(fork, config_url()) == (BOOK / name).read_text(), name
    module = (root / "cccl_lite" / "book" / "notebook.py").read_text()
    assert f'REPOSITORY = "{fork}"' in module
    assert module.replace(fork, config_url()) == (ROOT / "cccl_lite" / "book" / "notebook.py").read_text()
    colab = (root / "colab" / "02_perceive.ipynb").read_text()
    assert fork in colab and config_url() not in colab
    assert sync_repository_url(root) == []  # done once, nothing left to change


def launch_url(root: Path, pagename: str):
    """The Colab URL the book's rocket button shows for ``pagename`` after
    book/_ext/colab_launch.py ran on what sphinx-book-theme made (its
    header_buttons group "launch-buttons"; None: no Colab button)."""
    sys.path.insert(0, str(BOOK / "_ext"))
    try:
        from colab_launch import retarget_colab
    finally:
        sys.path.remove(str(BOOK / "_ext"))
    theme = f"https://colab.research.google.com/github/x/y/blob/main/{pagename}.ipynb"
    context = {"header_buttons": [{"label": "launch-buttons", "buttons": [
        {"type": "link", "text": "Colab", "url": theme}]}]}
    retarget_colab(SimpleNamespace(srcdir=str(root)), pagename, "page.html", context, None)
    buttons = [b for g in context["header_buttons"] for b in g["buttons"]]
    return buttons[0]["url"] if buttons else None


def test_launch_button_opens_the_colab_edition(tmp_path):
    assert launch_url(ROOT, "book/01_task") == colab_url(config_url(), "colab/01_task.ipynb",
                                                         "main")
    root = fake_checkout(tmp_path, config_url())
    assert launch_url(root, "book/01_task") is None  # no colab/ there: no raw-MyST button
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["sphinx"]["local_extensions"] == {"colab_launch": "book/_ext"}


def test_command_line_refuses_to_overwrite_and_the_book_folder(tmp_path, capsys):
    out = tmp_path / "colab"
    assert cli_main(["colab-edition", "--out", str(out), "--chapter", "01_task"]) == 0
    path = out / "01_task.ipynb"
    path.write_text("mine")
    assert cli_main(["colab-edition", "--out", str(out), "--chapter", "01_task"]) == 1
    err = capsys.readouterr().err.strip()
    assert path.read_text() == "mine"
    assert len(err.splitlines()) == 1 and "--overwrite" in err and "PosixPath" not in err
    assert cli_main(["colab-edition", "--out", str(out), "--chapter", "01_task",
                     "--overwrite"]) == 0
    assert nbformat.read(path, as_version=4).metadata["cccl"]["edition"] == "colab"
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "file").write_text("x")
    for bad, says in (("dangling", "which does not exist"), ("file", "a file, not a folder")):
        assert cli_main(["colab-edition", "--out", str(tmp_path / bad)]) == 1
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "gone").exists()
    root = fake_checkout(tmp_path, config_url())
    before = sorted(p.name for p in (root / "book").iterdir())
    assert cli_main(["colab-edition", "--book", str(root / "book"),
                     "--out", str(root / "book")]) == 1
    assert "book's source folder" in capsys.readouterr().err
    assert sorted(p.name for p in (root / "book").iterdir()) == before


def test_same_sources_same_bytes(tmp_path):
    a = make_edition("colab", tmp_path / "a", BOOK, ["02_perceive"])
    b = make_edition("colab", tmp_path / "b", BOOK, ["02_perceive"])
    assert a[0].read_bytes() == b[0].read_bytes()
    nb = nbformat.read(a[0], as_version=4)
    assert [c.id for c in nb.cells][:3] == ["02_perceive-000", "02_perceive-001", "02_perceive-002"]
