"""The exercises with a checker (:data:`EXERCISES`), and their solutions, kept
out of the notebooks in ``cccl_lite/solutions/<label>.md``: the built book
shows each folded under its exercise; :func:`show_solution` prints it in a
notebook; :func:`_last_value` runs a cell as a notebook would (for the tests
and the student edition).
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cccl_lite.book.exercises.core import CheckResult

SOLUTIONS_DIR = Path(__file__).resolve().parents[2] / "solutions"



@dataclass(frozen=True)
class Exercise:
    """An exercise with a checker: its label, the chapter (``book/<chapter>.md``)
    whose stub cell defines ``function``, and the name of its checker here."""

    label: str
    chapter: str
    function: str
    checker: str

    def check(self, fn: Callable) -> CheckResult:
        # The checkers live in the package's modules; its __init__ names them all.
        return getattr(importlib.import_module("cccl_lite.book.exercises"), self.checker)(fn)


EXERCISES = {e.label: e for e in (
    Exercise("ex-recall", "01_task", "my_recall", "check_recall"),
    Exercise("ex-perceive-cpc", "02_perceive", "my_cpc", "check_cpc"),
    Exercise("ex-perceive-sdpa", "02_perceive", "my_cpc_fused", "check_cpc"),
    Exercise("ex-reason-gcn", "03_reason", "my_residual_gcn", "check_gcn"),
    Exercise("ex-reason-edges", "03_reason", "my_edge_weights", "check_edge_weights"),
    Exercise("ex-reason-cross", "03_reason", "my_cross_gru", "check_cross_gru"),
    Exercise("ex-align-vsf", "04_align", "my_vsf", "check_vsf"),
    Exercise("ex-align-cross", "04_align", "my_cross_attention", "check_cross_attention"),
    Exercise("ex-loss-triplet", "05_loss", "my_triplet", "check_triplet"),
    Exercise("ex-train-pairwise", "06_training", "my_pairwise_accuracy",
             "check_pairwise_accuracy"),
    Exercise("ex-train-step", "06_training", "my_train_step", "check_train_step"),
    Exercise("ex-inside-rank", "08_inside", "my_rank_scores", "check_rank_scores"),
    Exercise("ex-flickr-disk", "09_flickr30k", "my_feature_gib", "check_feature_size"),
    Exercise("ex-faster-vsf", "10_faster", "my_vsf", "check_vsf"),
)}


def solution_text(label: str) -> str:
    """The solution of exercise ``label`` (MyST markdown), from
    ``cccl_lite/solutions/<label>.md``; KeyError names the known labels."""
    path = SOLUTIONS_DIR / f"{label}.md"
    if not path.is_file():
        known = sorted(p.stem for p in SOLUTIONS_DIR.glob("ex-*.md"))
        raise KeyError(f"no solution for {label!r}; known: {', '.join(known)}")
    return path.read_text(encoding="utf-8")


def solution_code(label: str) -> str:
    """The Python code blocks of a solution, joined: for a checked exercise,
    code that defines the function and runs without the chapter's state."""
    blocks = re.findall(r"^```python\n(.*?)^```", solution_text(label), flags=re.S | re.M)
    return "\n".join(blocks)


def _plain_roles(text: str) -> str:
    """MyST roles a notebook cannot resolve, as plain text: {ref}`ch-task`
    becomes ch-task, {cite:p}`a,b` becomes (a, b)."""
    text = re.sub(r"\{cite:p\}`([^`]*)`", lambda m: f"({m.group(1).replace(',', ', ')})", text)
    return re.sub(r"\{[a-z:]+\}`([^`]*)`", r"\1", text)


def show_solution(label: str):
    """Show the solution of exercise ``label`` in a notebook (rendered
    markdown under IPython, plain text elsewhere). The notebooks carry no
    solution text: this is how a reader who has tried opens one."""
    text = _plain_roles(solution_text(label))
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # plain Python
        print(text)
        return None
    if get_ipython() is None:
        print(text)
        return None
    display(Markdown(text))
    return None


def _last_value(code: str, namespace: dict):
    """Run ``code`` in ``namespace`` and return its last expression's value
    (None if it does not end with an expression), as a notebook cell would."""
    tree = ast.parse(code)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    if last is not None:
        tree.body = tree.body[:-1]
    exec(compile(tree, "<cell>", "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
