"""The exercise checkers accept a correct answer, say what is wrong with a wrong
one and "not implemented yet" for a stub; every exercise has a solution, kept
out of the notebooks, and each checked one's solution passes its checker."""

import ast
import importlib
import inspect
import json
import math
import re
from pathlib import Path

import jupytext
import numpy as np
import pytest
import torch

from cccl_lite.model.loss import HybridLoss, alignment_term, coherence_term, fuse_scores
from cccl_lite.book.exercises import (EXERCISES, SOLUTIONS_DIR, _last_value, check_cpc,
                                      check_cross_attention, check_cross_gru, check_edge_weights,
                                      check_feature_size, check_gcn, check_pairwise_accuracy,
                                      check_rank_scores, check_train_step,
                                      check_recall, check_triplet, check_vsf, show_solution,
                                      solution_code, solution_text)


# ---- answers written from the paper, independently of the package --------------

def cpc_answer(y, mask, w_q, w_k, w_v, w_qg, b_qg, w_kg, b_kg, gate_k_with="K"):
    q, k, v = y @ w_q, y @ w_k, y @ w_v
    u = q * k
    g_q = torch.sigmoid(u @ w_qg + b_qg)
    g_k = torch.sigmoid(u @ w_kg + b_kg)
    k_hat = k * (g_k if gate_k_with == "K" else g_q)
    logits = (q * g_q) @ k_hat.transpose(1, 2) / math.sqrt(y.shape[-1])
    logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
    return torch.softmax(logits, -1) @ v + y


def vsf_answer(a, b, w):
    x = (a - b) ** 2 @ w.T
    return x / x.norm(dim=-1, keepdim=True)


def triplet_answer(s, margin):
    d = s.diagonal()
    off = s.masked_fill(torch.eye(len(s), dtype=torch.bool), float("-inf"))
    return ((margin - d + off.max(1).values).clamp(min=0).sum()
            + (margin - d + off.max(0).values).clamp(min=0).sum())


def recall_answer(sims, optimistic=False):
    n = sims.shape[0]
    out = {}
    i2t, t2i = [], []
    for i in range(n):
        best = sims[i, 5 * i:5 * i + 5].max()
        others = np.delete(sims[i], range(5 * i, 5 * i + 5))
        i2t.append((others > best).sum() if optimistic else (others >= best).sum())
    for j in range(5 * n):
        gt = sims[j // 5, j]
        others = np.delete(sims[:, j], j // 5)
        t2i.append((others > gt).sum() if optimistic else (others >= gt).sum())
    for name, r in (("i2t", np.array(i2t)), ("t2i", np.array(t2i))):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100 * np.mean(r < k)
    out["rsum"] = sum(out.values())
    return out


# ---- the checkers -------------------------------------------------------------

def test_correct_answers_pass():
    for result in (check_cpc(cpc_answer), check_vsf(vsf_answer), check_triplet(triplet_answer),
                   check_recall(recall_answer)):
        assert result and result.message.startswith("✓"), result.message


def test_cpc_typo_g_v_is_caught_as_values():
    r = check_cpc(lambda *a: cpc_answer(*a, gate_k_with="Q"))
    assert not r and "values differ" in r.message and "CPC" in r.message


def test_cpc_without_mask_fails_on_the_padded_trial():
    def no_mask(y, mask, *w):
        return cpc_answer(y, torch.ones_like(mask), *w)
    r = check_cpc(no_mask)
    assert not r and "trial 2" in r.message and "values differ" in r.message


def test_vsf_shape_and_normalisation_errors():
    r = check_vsf(lambda a, b, w: vsf_answer(a, b, w).sum(-1))
    assert not r and "output shape" in r.message
    r = check_vsf(lambda a, b, w: (a - b) ** 2 @ w.T)
    assert not r and "values differ" in r.message


def test_detached_gradient_is_reported():
    def detached_norm(a, b, w):
        x = (a - b) ** 2 @ w.T
        return x / x.norm(dim=-1, keepdim=True).detach()
    r = check_vsf(detached_norm)
    assert not r and "gradient" in r.message and "values match" in r.message
    r = check_vsf(lambda a, b, w: torch.from_numpy(vsf_answer(a, b, w).detach().numpy()))
    assert not r and "no grad_fn" in r.message


def test_triplet_sum_over_all_negatives_is_wrong():
    def all_negatives(s, margin):
        d = s.diagonal()
        off = ~torch.eye(len(s), dtype=torch.bool)
        return (((margin - d[:, None] + s).clamp(min=0) * off).sum()
                + ((margin - d[None, :] + s).clamp(min=0) * off).sum())
    r = check_triplet(all_negatives)
    assert not r and "values differ" in r.message and "triplet" in r.message


def test_recall_with_optimistic_ties_is_caught_on_the_tied_trial():
    r = check_recall(lambda s: recall_answer(s, optimistic=True))
    assert not r and "trial 2" in r.message and "tied" in r.message
    r = check_recall(lambda s: {"rsum": 0.0})
    assert not r and "missing keys" in r.message


def test_an_exception_becomes_a_message():
    r = check_vsf(lambda a, b, w: 1 / 0)
    assert not r and "ZeroDivisionError" in r.message


# ---- stubs: "not implemented yet", never a wrong answer -------------------------

def _stub(*args, **kwargs):
    raise NotImplementedError


def test_every_checker_tells_a_stub_from_a_wrong_answer():
    def stub_mu(sims, mu=100.0):
        raise NotImplementedError

    for checker, stub in ((check_cpc, _stub), (check_vsf, _stub), (check_triplet, _stub),
                          (check_recall, _stub), (check_gcn, _stub),
                          (check_rank_scores, stub_mu), (check_feature_size, _stub),
                          (check_pairwise_accuracy, _stub)):
        r = checker(stub)
        assert not r and r.status == "todo", (checker.__name__, r.message)
        assert "not implemented yet" in r.message and "✗" not in r.message
    wrong = check_vsf(lambda a, b, w: (a - b) ** 2 @ w.T)
    assert wrong.status == "fail" and "not implemented" not in wrong.message
    assert check_vsf(vsf_answer).status == "pass"


def test_a_stub_that_raises_something_else_is_a_wrong_answer():
    def half_done(a, b, w):
        raise ValueError("not finished")
    r = check_vsf(half_done)
    assert r.status == "fail" and "ValueError" in r.message


# ---- the new checkers: residual GCN, Fig 6 ranks, feature sizes --------------------

def gcn_answer(h, w_e, w_g, w_r):
    """Eq 24 by loops over graphs and nodes: ĥ_i = h_i + (Σ_j W_e[i, j] h_j W_G) W_R."""
    out = torch.empty_like(h)
    for b in range(h.shape[0]):
        for i in range(h.shape[1]):
            gathered = sum(w_e[b, i, j] * h[b, j] for j in range(h.shape[1]))
            out[b, i] = h[b, i] + (gathered @ w_g) @ w_r
    return out


def test_gcn_checker_accepts_loops_and_catches_slips():
    assert check_gcn(gcn_answer)
    r = check_gcn(lambda h, w_e, w_g, w_r: (w_e @ h @ w_g) @ w_r)  # no residual
    assert not r and "values differ" in r.message and "GCN" in r.message
    r = check_gcn(lambda h, w_e, w_g, w_r: h + (w_e @ h @ w_g.T) @ w_r)  # W_G transposed
    assert not r and "values differ" in r.message
    r = check_gcn(lambda h, w_e, w_g, w_r: h + w_r @ (w_e @ h @ w_g))  # W_R from the left
    assert not r and "raised RuntimeError" in r.message


def rank_answer(sims, mu=100.0, first_rank=1, stable=True):
    n = len(sims)
    order = np.argsort(-np.asarray(sims), kind="stable" if stable else "quicksort")
    if not stable:  # ties in reverse region order
        order = np.lexsort((-np.arange(n), -np.asarray(sims)))
    scores = np.zeros(n)
    for rank, i in enumerate(order, start=first_rank):
        scores[i] = mu * (n - rank) ** 2
    return scores


def test_rank_checker_by_hand_and_its_hints():
    # Hand case: similarities (0.2, 0.7, 0.5): ranks 3, 1, 2 of n = 3.
    assert np.allclose(rank_answer(np.array([0.2, 0.7, 0.5])), [0.0, 400.0, 100.0])
    assert check_rank_scores(rank_answer)
    assert check_rank_scores(lambda s, mu=100.0: torch.from_numpy(rank_answer(s, mu)))
    r = check_rank_scores(lambda s, mu=100.0: rank_answer(s, mu, first_rank=0))
    assert not r and "rank 1, not 0" in r.message
    r = check_rank_scores(lambda s, mu=100.0: rank_answer(s, mu, stable=False))
    assert not r and "trial 3" in r.message and "tied" in r.message
    r = check_rank_scores(lambda s, mu=100.0: rank_answer(s, mu)[:-1])
    assert not r and "scores for" in r.message


def test_feature_size_checker_by_hand_and_its_hints():
    # COCO's training split as float32: 113,287 × 36 × 2048 × 4 bytes ≈ 31.1 GiB.
    gib = 113_287 * 36 * 2048 * 4 / 2 ** 30
    assert abs(gib - 31.12) < 0.01
    assert check_feature_size(lambda n, r, d, b: n * r * d * b / 2 ** 30)
    r = check_feature_size(lambda n, r, d, b: n * r * d * b / 1e9)
    assert not r and "GB" in r.message
    r = check_feature_size(lambda n, r, d, b: n * r * d * b)
    assert not r and "bytes" in r.message
    r = check_feature_size(lambda n, r, d, b: "31 GiB")
    assert not r and "expected a number" in r.message


def test_pairwise_accuracy_checker_by_hand_and_its_hints():
    # Hand case: own (3, 1, 2, 2) against (1, 1, 3, 0): won, tied, lost, won:
    # (2 + 0.5) / 4 = 62.5 %.
    def by_loop(own, negative):
        return 100 * sum(1.0 if o > n else 0.5 if o == n else 0.0
                         for o, n in zip(own, negative)) / len(own)
    assert by_loop([3, 1, 2, 2], [1, 1, 3, 0]) == 62.5
    assert check_pairwise_accuracy(by_loop)
    r = check_pairwise_accuracy(lambda o, n: float(np.mean(o > n)) * 100)
    assert not r and "ties should count one half" in r.message
    r = check_pairwise_accuracy(lambda o, n: by_loop(o, n) / 100)
    assert not r and "fraction" in r.message


# ---- solutions: one per exercise, out of the notebooks, the checked ones pass -------

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "book").glob("[01][0-9]_*.md"))


def exercise_labels() -> dict[str, str]:
    labels = {}
    for md in CHAPTERS:
        for label in re.findall(r"^:label: (ex-[\w-]+)$", md.read_text(), flags=re.M):
            labels[label] = md.stem
    return labels


def test_every_exercise_has_a_solution_file_shown_in_the_book():
    labels = exercise_labels()
    assert len(labels) >= 40
    files = {p.stem for p in SOLUTIONS_DIR.glob("ex-*.md")}
    assert set(labels) == files, (sorted(set(labels) - files), sorted(files - set(labels)))
    for label, stem in labels.items():
        text = (ROOT / "book" / f"{stem}.md").read_text()
        block = (f"````{{solution}} {label}\n:class: dropdown\n\n"
                 f"```{{include}} ../cccl_lite/solutions/{label}.md\n```\n````")
        assert block in text, f"{stem}.md: {label}'s solution is not the folded include"


def test_no_solution_text_in_the_notebooks():
    """The paired .ipynb a student opens holds no solution's prose and no
    checked solution's function body (the stubs only raise)."""
    sources = {md.stem: "\n".join(c.source for c in jupytext.read(
        ROOT / "book" / f"{md.stem}.ipynb").cells) for md in CHAPTERS}
    for label, stem in exercise_labels().items():
        text = re.sub(r"^```python\n.*?^```", "", solution_text(label), flags=re.S | re.M)
        prose = [line.strip() for line in text.splitlines()
                 if len(line.strip()) > 40 and "`" not in line and "$" not in line]
        for line in prose:
            assert line not in sources[stem], (label, line)
        if label in EXERCISES:
            code = solution_code(label)
            body = re.search(rf"^def {EXERCISES[label].function}\(.*?\n(.+)$", code, flags=re.M)
            assert body, label
            definition = body.group(0)
            assert definition not in sources[stem], (label, definition)


def test_the_registry_names_real_stubs():
    for label, ex in EXERCISES.items():
        assert exercise_labels()[label] == ex.chapter, label
        cells = [c.source for c in jupytext.read(ROOT / "book" / f"{ex.chapter}.md").cells
                 if c.cell_type == "code"]
        stub = [c for c in cells if f"def {ex.function}(" in c and "NotImplementedError" in c]
        assert len(stub) == 1, f"{ex.chapter}: one stub cell for {ex.function}"
        assert stub[0].startswith(f"# ✍️ {label}:"), stub[0][:60]


@pytest.mark.parametrize("label", sorted(EXERCISES))
def test_stub_says_not_implemented_and_solution_passes(label):
    import cccl_lite.book.exercises as ex_module

    ex = EXERCISES[label]
    cells = [c.source for c in jupytext.read(ROOT / "book" / f"{ex.chapter}.md").cells
             if c.cell_type == "code" and f"def {ex.function}(" in c.source
             and "NotImplementedError" in c.source]
    result = _last_value(cells[0], {**vars(ex_module)})
    assert result.status == "todo" and "not implemented yet" in result.message, result
    namespace = {}
    _last_value(solution_code(label), namespace)
    passed = ex.check(namespace[ex.function])
    assert passed and passed.status == "pass", passed.message


def test_show_solution_prints_outside_ipython(capsys):
    show_solution("ex-recall")
    out = capsys.readouterr().out
    assert "def my_recall" in out
    with pytest.raises(KeyError, match="known"):
        show_solution("ex-nothing")


# ---- every solution calls the package as it is ----------------------------------

def _package_calls(code: str):
    """(name, object, call) for each call of a name the code imports from
    cccl_lite (``from cccl_lite.x import y``), and (name, None, None) for
    each imported name the module lacks."""
    tree = ast.parse(code)
    imported = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cccl_lite"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                obj = getattr(module, alias.name, None)
                if obj is None:
                    yield f"{node.module}.{alias.name}", None, None
                imported[alias.asname or alias.name] = obj
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and imported.get(node.func.id) is not None:
            yield node.func.id, imported[node.func.id], node


def _bind(obj, call: ast.Call) -> bool:
    """Bind the call's arguments (placeholders: values are not needed) to
    obj's signature; False when the call cannot be checked (*args, **kw, a
    class or object without a signature). Raises TypeError when they do not fit."""
    if any(isinstance(a, ast.Starred) for a in call.args) or \
            any(k.arg is None for k in call.keywords):
        return False
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    sig.bind(*call.args, **{k.arg: None for k in call.keywords})
    return True


def test_every_solution_calls_the_package_with_arguments_it_takes():
    # A solution that trains (an experiment) is never run by the tests, so an
    # API change would leave it calling arguments that no longer exist.
    checked, wrong = 0, []
    for label in sorted(p.stem for p in SOLUTIONS_DIR.glob("*.md")):
        for name, obj, call in _package_calls(solution_code(label)):
            if obj is None:
                wrong.append(f"{label}: imports {name}, which does not exist")
                continue
            try:
                checked += _bind(obj, call)
            except TypeError as e:
                wrong.append(f"{label}: {name}(...): {e}")
    assert not wrong, wrong
    assert checked >= 10  # the check saw the solutions' package calls


def test_the_call_check_catches_a_removed_argument():
    # The check above must be able to fail: an argument the function does
    # not take, and a name the module does not have.
    code = ("from cccl_lite.studies.ablate import run_ablations, no_such_name\n"
            "run_ablations('d.h5', 'out', 'r.json', noise_seeds=0)\n")
    found = list(_package_calls(code))
    assert ("cccl_lite.studies.ablate.no_such_name", None, None) in found
    (_, obj, call), = [f for f in found if f[1] is not None]
    with pytest.raises(TypeError, match="noise_seeds"):
        _bind(obj, call)


# ---- the hard parts: eq 17, eqs 21-23, eq 26, one training step ------------------
# Each reference and each mistake is written here by hand from the equations,
# independently of the checkers' own slip functions.

def cross_attention_answer(q, c, lam, norm_dim=0, relu=True, scale=True, cosine=True):
    if cosine:
        q = torch.nn.functional.normalize(q, dim=-1)
        cn = torch.nn.functional.normalize(c, dim=-1)
    else:
        cn = c
    m = torch.einsum("id,jd->ij", q, cn)
    if relu:
        m = torch.where(m > 0, m, torch.zeros_like(m))
    m = m / torch.sqrt((m ** 2).sum(norm_dim, keepdim=True)).clamp(min=1e-8)
    logits = (lam if scale else 1.0) * m
    w = torch.exp(logits - logits.max(1, keepdim=True).values)
    return (w / w.sum(1, keepdim=True)) @ c


def test_cross_attention_by_hand():
    # Hand case: one query along x; contexts along x and y. M = [1, 0]; the
    # column norms over the single query leave M̄ = [1, 0]; with λ = 1 the
    # weights are e/(e + 1) and 1/(e + 1).
    q, c = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    e = math.e
    want = torch.tensor([[2 * e / (e + 1), 3 / (e + 1)]])
    assert torch.allclose(cross_attention_answer(q, c, 1.0), want)
    assert torch.allclose(check_cross_attention.__globals__["cross_attention"](
        q[None], torch.ones(1, 1, dtype=torch.bool), c[None],
        torch.ones(1, 2, dtype=torch.bool), 1.0)[0][0, 0], want)


@pytest.mark.parametrize("mistake, hint", [
    (dict(norm_dim=1), "query axis i"),
    (dict(relu=False), "relu"),
    (dict(scale=False), "temperature"),
    (dict(cosine=False), "cosine"),
])
def test_cross_attention_mistakes_fail_with_their_hint(mistake, hint):
    assert check_cross_attention(cross_attention_answer).status == "pass"
    r = check_cross_attention(lambda q, c, lam: cross_attention_answer(q, c, lam, **mistake))
    assert r.status == "fail" and "hint:" in r.message and hint in r.message, r.message


def test_cross_attention_softmax_over_queries_and_normalised_values():
    def over_queries(q, c, lam):
        qn, cn = q / q.norm(dim=1, keepdim=True), c / c.norm(dim=1, keepdim=True)
        m = (qn @ cn.T).clamp(min=0)
        m = m / m.norm(dim=0, keepdim=True)
        return torch.softmax(lam * m, dim=0) @ c
    r = check_cross_attention(over_queries)
    assert r.status == "fail" and "attended axis j (each query" in r.message, r.message

    def normalised_values(q, c, lam):
        cn = c / c.norm(dim=1, keepdim=True)
        m = ((q / q.norm(dim=1, keepdim=True)) @ cn.T).clamp(min=0)
        m = m / m.norm(dim=0, keepdim=True)
        return torch.softmax(lam * m, dim=1) @ cn
    r = check_cross_attention(normalised_values)
    assert r.status == "fail" and "normalised copies" in r.message, r.message


def edge_answer(x, w1, w2, adjacency, when="before", scale=True, empty="zero"):
    n, d = x.shape
    logits = torch.stack([torch.stack([(x[i] @ w1) @ (x[j] @ w2) for j in range(n)])
                          for i in range(n)])
    if scale:
        logits = logits / d ** 0.5
    if when == "after":
        return torch.softmax(logits, 1) * adjacency
    if when == "never":
        return torch.softmax(logits, 1)
    rows = []
    for i in range(n):
        allowed = adjacency[i]
        if not allowed.any():
            rows.append(torch.full((n,), float("nan")) if empty == "nan"
                        else torch.zeros(n, dtype=x.dtype))
            continue
        e = torch.exp(logits[i] - logits[i][allowed].max()) * allowed
        rows.append(e / e.sum())
    return torch.stack(rows)


def test_edge_weights_by_hand_and_mistakes():
    # Hand case: two nodes, x = e_1 and e_2, W1 = W2 = I, arcs 1-2 and self-loops
    # for node 1 only allowed to itself: row 1 = [1, 0]; row 2: logits [0, 1/√2].
    x = torch.eye(2, dtype=torch.float64)
    adj = torch.tensor([[True, False], [True, True]])
    got = edge_answer(x, torch.eye(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64), adj)
    a = math.exp(1 / math.sqrt(2))
    assert torch.allclose(got, torch.tensor([[1.0, 0.0], [1 / (1 + a), a / (1 + a)]],
                                            dtype=torch.float64))
    assert check_edge_weights(edge_answer).status == "pass"
    for kwargs, hint in ((dict(when="after"), "mask before the softmax"),
                         (dict(when="never"), "dependency mask is missing"),
                         (dict(scale=False), "1/√d"),
                         (dict(empty="nan"), "not NaN")):
        r = check_edge_weights(lambda *args, kw=kwargs: edge_answer(*args, **kw))
        assert r.status == "fail" and hint in r.message, (kwargs, r.message)


def gru_answer(cell, cross, nodes, order="cross first", keep="last", start="zero"):
    seq = {"cross first": [cross, *nodes], "nodes only": list(nodes),
           "cross last": [*nodes, cross]}[order]
    h = cross if start == "cross" else torch.zeros_like(cross)
    if start == "cross":
        seq = list(nodes)
    states = []
    for x in seq:
        r = torch.sigmoid(x @ cell.weight_ih[:len(x)].T + cell.bias_ih[:len(x)]
                          + h @ cell.weight_hh[:len(x)].T + cell.bias_hh[:len(x)])
        d = len(x)
        z = torch.sigmoid(x @ cell.weight_ih[d:2 * d].T + cell.bias_ih[d:2 * d]
                          + h @ cell.weight_hh[d:2 * d].T + cell.bias_hh[d:2 * d])
        n = torch.tanh(x @ cell.weight_ih[2 * d:].T + cell.bias_ih[2 * d:]
                       + r * (h @ cell.weight_hh[2 * d:].T + cell.bias_hh[2 * d:]))
        h = (1 - z) * n + z * h
        states.append(h)
    return states[-1] if keep == "last" else torch.stack(states).mean(0)


def test_cross_gru_by_hand_and_mistakes():
    # The gate equations written out (PyTorch's r, z, n order) agree with nn.GRUCell.
    cell = torch.nn.GRUCell(3, 3).double()
    x, h0 = torch.randn(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    assert torch.allclose(gru_answer(cell, x, torch.empty(0, 3, dtype=torch.float64)),
                          cell(x, h0))
    assert check_cross_gru(gru_answer).status == "pass"
    for kwargs, hint in ((dict(order="nodes only"), "read the other item's vector first"),
                         (dict(order="cross last"), "first, not last"),
                         (dict(start="cross"), "not the initial state"),
                         (dict(keep="mean"), "not the mean")):
        r = check_cross_gru(lambda *a, kw=kwargs: gru_answer(*a, **kw))
        assert r.status == "fail" and hint in r.message, (kwargs, r.message)


def step_answer(model, objective, optimizer, batch, max_norm, zero=True, clip=True, total=True):
    _, scores = model(batch["images"], batch["texts"])
    # eq 34 written out from its terms (eq 33's alignment on F, eq 31's coherence)
    mask = batch["positive_mask"]
    alignment = alignment_term(fuse_scores(scores), objective.margin, mask)
    coherence = coherence_term(*scores, objective.coherence_reduction)
    parts = HybridLoss(alignment + objective.coherence_weight * coherence, alignment, coherence)
    loss = parts.total if total else parts.alignment
    if zero:
        for p in model.parameters():
            p.grad = None
    loss.backward()
    if clip:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        if norm > max_norm:
            for g in grads:
                g.mul_(max_norm / (norm + 1e-6))
    optimizer.step()
    return float(loss.detach())


def test_train_step_clipping_is_active_on_the_tiny_model():
    from cccl_lite.book.exercises import TinyScorer
    from cccl_lite.book.exercises.hard import _train_batches
    from cccl_lite.book.exercises.hard import _OBJECTIVE
    model, batch = TinyScorer(0), _train_batches(0, 4)[0]
    _, scores = model(batch["images"], batch["texts"])
    _OBJECTIVE(scores, batch["positive_mask"]).total.backward()
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
    assert norm > 0.1  # the checker's max_norm: a missing clip changes the update


def test_train_step_by_hand_and_mistakes():
    assert check_train_step(step_answer).status == "pass"
    for kwargs, hint in ((dict(zero=False), "zero the gradients"),
                         (dict(clip=False), "clip the gradient norm"),
                         (dict(total=False), "not L_t alone")):
        r = check_train_step(lambda *a, kw=kwargs: step_answer(*a, **kw))
        assert r.status == "fail" and hint in r.message, (kwargs, r.message)

    def no_step(model, objective, optimizer, batch, max_norm):
        _, scores = model(batch["images"], batch["texts"])
        return float(objective(scores, batch["positive_mask"]).total.detach())
    r = check_train_step(no_step)
    assert r.status == "fail" and "optimizer.step()" in r.message, r.message

    def wrong_return(*a):
        step_answer(*a)
        return 0.0
    r = check_train_step(wrong_return)
    assert r.status == "fail" and "returned loss" in r.message, r.message


def test_triplet_rejects_a_positive_masked_with_zero():
    def zero_masked(s, margin):
        B = len(s)
        off = s * (1 - torch.eye(B, dtype=s.dtype))  # the positive becomes 0
        d = s.diagonal()
        return ((margin - d + off.max(1).values).clamp(min=0).sum()
                + (margin - d + off.max(0).values).clamp(min=0).sum())
    r = check_triplet(zero_masked)
    assert r.status == "fail" and "masked with 0" in r.message, r.message


def test_new_stubs_say_not_implemented():
    for checker in (check_cross_attention, check_edge_weights, check_cross_gru,
                    check_train_step):
        r = checker(_stub)
        assert r.status == "todo" and "not implemented yet" in r.message, r.message


def test_the_remaining_listed_mistakes_fail_with_their_hints():
    # eq 17 without the l2 normalisation (relu(M) straight into the softmax)
    def no_norm(q, c, lam):
        qn, cn = q / q.norm(dim=1, keepdim=True), c / c.norm(dim=1, keepdim=True)
        return torch.softmax(lam * (qn @ cn.T).clamp(min=0), dim=1) @ c
    r = check_cross_attention(no_norm)
    assert r.status == "fail" and "before the softmax" in r.message, r.message

    # eqs 21-23: the softmax down the columns, and W1 / W2 swapped
    def by_columns(x, w1, w2, adjacency):
        logits = (x @ w1) @ (x @ w2).T / x.shape[1] ** 0.5
        w = torch.softmax(logits.masked_fill(~adjacency, float("-inf")), dim=0)
        return w.nan_to_num(0.0)
    r = check_edge_weights(by_columns)
    assert r.status == "fail" and "not over columns" in r.message, r.message

    def swapped(x, w1, w2, adjacency):
        logits = (x @ w2) @ (x @ w1).T / x.shape[1] ** 0.5
        return torch.softmax(logits.masked_fill(~adjacency, float("-inf")), dim=1).nan_to_num(0.0)
    r = check_edge_weights(swapped)
    assert r.status == "fail" and "transpose" in r.message, r.message

    # eq 26: the state after the first node instead of the last
    def first_node_state(cell, cross, nodes):
        h = cell(cross, torch.zeros_like(cross))
        return cell(nodes[0], h)
    r = check_cross_gru(first_node_state)
    assert r.status == "fail" and "not the first" in r.message, r.message
