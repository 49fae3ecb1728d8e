"""The exercise checkers accept a correct answer and say what is wrong with a wrong one."""

import math

import numpy as np
import torch

from cccl_lite.exercises import check_cpc, check_recall, check_triplet, check_vsf


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
