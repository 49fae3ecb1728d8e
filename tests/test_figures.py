"""The drawn architecture figure: regenerating it gives valid SVG files, one per
stage with that stage (and only it) highlighted, and the committed copies under
book/figures/ are the same set of valid files the chapters show."""

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from cccl_lite.book.figures import STAGES, architecture_figure, write_architecture_svgs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "book" / "figures"
SVG = "{http://www.w3.org/2000/svg}"
NAMES = ["architecture.svg"] + [f"architecture-{s}.svg" for s in STAGES]


def ids(path: Path) -> set[str]:
    root = ET.parse(path).getroot()  # raises on malformed XML
    assert root.tag == f"{SVG}svg", f"{path.name}: root element is {root.tag}"
    return {e.get("id") for e in root.iter() if e.get("id")}


def check_svg(path: Path, highlight: str | None) -> None:
    found = ids(path)
    # Every stage's band and every box is drawn.
    assert {f"band-{s}" for s in STAGES if s != highlight} <= found, path.name
    assert {"box-image", "box-text", "box-v_cpc", "box-gcn", "box-loss"} <= found, path.name
    here = [i for i in found if i.endswith("-here")]
    assert here == ([f"band-{highlight}-here"] if highlight else []), (path.name, here)
    width, height = (float(v) for v in re.findall(
        r"[\d.]+", ET.parse(path).getroot().get("viewBox"))[2:])
    assert width > 400 and height > 200


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    return write_architecture_svgs(tmp_path_factory.mktemp("figures"))


# Not marked slow: drawing every figure is the module fixture's cost, which the
# fast check of the committed figures below pays anyway.
def test_regenerating_gives_one_valid_svg_per_stage(regenerated):
    assert [p.name for p in regenerated] == NAMES
    for path, highlight in zip(regenerated, [None, *STAGES]):
        check_svg(path, highlight)


@pytest.mark.slow  # draws every figure once more
def test_regenerating_is_deterministic(regenerated, tmp_path):
    again = write_architecture_svgs(tmp_path)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in regenerated]


def test_committed_figures_are_valid_and_current(regenerated):
    for path, highlight in zip(regenerated, [None, *STAGES]):
        committed = FIGURES / path.name
        assert committed.is_file(), "run: python book/figures/make_architecture.py"
        check_svg(committed, highlight)
        # Same drawing: the same bands and boxes in the same order (byte
        # equality would tie the test to one matplotlib version's output).
        assert drawn(committed) == drawn(path), (
            f"{path.name} is stale: run python book/figures/make_architecture.py")


def drawn(path: Path) -> list[str]:
    """The figure's own ids (bands and boxes) in drawing order."""
    return [e.get("id") for e in ET.parse(path).getroot().iter()
            if (e.get("id") or "").startswith(("band-", "box-"))]


def test_chapters_show_their_stage():
    shown = {"preface.md": "architecture.svg", "02_perceive.md": "architecture-perceive.svg",
             "03_reason.md": "architecture-reason.svg", "04_align.md": "architecture-align.svg",
             "05_loss.md": "architecture-loss.svg"}
    for page, svg in shown.items():
        assert f"figures/{svg}" in (ROOT / "book" / page).read_text(), f"{page} lacks {svg}"


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="highlight"):
        architecture_figure("decode")
