"""Checkers for the book's "write it yourself" exercises.

Each ``check_*`` runs a reader's function and the package's reference on the
same random inputs (a few trials, one with padding or ties where that
matters) and says what differs first: an exception, the output's type or
shape, its values (where, and by how much), or its gradient with respect to
the inputs. The result prints as one line and is truthy when all trials pass::

    >>> from cccl_lite.book.exercises import check_vsf
    >>> check_vsf(my_vsf)
    ✓ VSF (eq 15): matches the reference on 3 random inputs (values and gradients).

Conventions follow the paper (row vectors times weights), so the reader's
code can be written straight from the equations; see each checker for the
signature expected.

A "write it yourself" cell starts as a stub whose body is ``raise
NotImplementedError``; its checker then says "not implemented yet" (status
``"todo"``) instead of reporting a wrong answer (``"fail"``). Solutions are
kept out of the notebooks: each lives in ``cccl_lite/solutions/<label>.md``,
which the built book shows folded under its exercise and
:func:`show_solution` prints in a notebook. :data:`EXERCISES` lists the
exercises that have a checker (chapter, function name, checker), which the
tests and the student edition (``cccl_lite.book.student``) use.

The package: :mod:`.core` (the result and the comparison), :mod:`.checks`
(the first checkers), :mod:`.hard` (eq 17, eqs 21-23, eq 26 and a training
step, with hints for their common mistakes), :mod:`.registry` (the list and
the solutions). A stub cell runs with this module's names in scope, so every
checker is imported here.
"""

from __future__ import annotations

from cccl_lite.book.exercises.checks import (check_cpc, check_feature_size, check_gcn,
                                             check_pairwise_accuracy, check_rank_scores,
                                             check_recall, check_triplet, check_vsf)
from cccl_lite.book.exercises.core import CheckResult
from cccl_lite.book.exercises.hard import (TinyScorer, check_cross_attention, check_cross_gru,
                                           check_edge_weights, check_train_step)
from cccl_lite.book.exercises.registry import (EXERCISES, SOLUTIONS_DIR, Exercise, _last_value,
                                               show_solution, solution_code, solution_text)

__all__ = ["CheckResult", "Exercise", "EXERCISES", "check_cpc", "check_vsf", "check_triplet",
           "check_recall", "check_gcn", "check_rank_scores", "check_feature_size",
           "check_pairwise_accuracy", "check_cross_attention", "check_edge_weights",
           "check_cross_gru", "check_train_step", "TinyScorer",
           "solution_text", "solution_code", "show_solution", "SOLUTIONS_DIR"]
