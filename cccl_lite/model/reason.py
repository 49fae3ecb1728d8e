"""Reason: graphs over regions and words, residual GCN, relation GRUs (eqs 21-26).

Taught in chapter 3 ("Reason"). Branch 3 of CCCL reasons *within* each
modality: a graph over regions (fully connected) and one over words (the
dependency parse), a residual graph convolution on each, then a GRU that
reads the other modality's global vector first and the nodes after it.

Readings taken where the paper is ambiguous (the book's readings appendix,
"Reason, Branch 3"):

* eqs 21-23 give unnormalised edge weights (W1 x_i)ᵀ(W2 x_j). We scale them
  by 1/√d and take a row-wise softmax over each node's allowed neighbours
  (all valid regions; for text, the words linked by a dependency arc, plus
  itself), as SGRAF's graph reasoning does. Masking before the softmax is
  eq 23's W^T ∘ W^D: non-arcs get weight exactly 0.
* eq 24 prints W_R as N × N, but N varies per text: W_R is a d × d residual
  projection (as in VSRN's residual GCN), Ĥ = H + (W_e H W_G) W_R.
* eq 26: padded steps leave the hidden state unchanged, so the state after
  the last step is the last *valid* hidden state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cccl_lite.model.perceive import masked_softmax

__all__ = ["full_adjacency", "GraphEdges", "ResidualGCN", "GraphReasoning", "CrossGRU"]


def full_adjacency(mask: torch.Tensor) -> torch.Tensor:
    """Fully connected graph over the valid nodes: (B, L) bool → (B, L, L) bool.

    The visual graph of eq 21, and the text graph of the "w/o S-NLP" ablation.
    """
    return mask[:, :, None] & mask[:, None, :]


class GraphEdges(nn.Module):
    """Edge weights W_e of a graph over nodes x (eqs 21-23).

    W_ij = (W1 x_i)ᵀ(W2 x_j) / √d (eq 21 for regions, eq 22 for words), kept
    only where ``adjacency`` allows (eq 23's dependency mask), then a softmax
    over each row's allowed neighbours (our normalisation, see module notes).

    ``forward(x, adjacency)``: x (B, L, d); adjacency (B, L, L) bool, True
    where an edge may exist (it should hold self-loops so no valid row is
    empty). Returns (B, L, L), rows summing to 1 (0 for padded rows).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, dim, bias=False)
        self.w2 = nn.Linear(dim, dim, bias=False)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        logits = self.w1(x) @ self.w2(x).transpose(-1, -2) * self.scale
        return masked_softmax(logits, adjacency, dim=-1)


class ResidualGCN(nn.Module):
    """One residual graph convolution, Ĥ = H + W_R(W_e H W_G) (eqs 24-25).

    W_G and W_R are d × d and bias-free, as printed; W_R acts on the feature
    side (readings appendix, "Eq 24"). ``forward(h, edges, mask)``: h
    (B, N, d), edges (B, N, N) from :class:`GraphEdges`, mask (B, N) bool.
    Returns (B, N, d), zero at padded nodes.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.w_g = nn.Linear(dim, dim, bias=False)
        self.w_r = nn.Linear(dim, dim, bias=False)

    def forward(self, h: torch.Tensor, edges: torch.Tensor, mask: torch.Tensor | None = None):
        out = h + self.w_r(edges @ self.w_g(h))
        return out if mask is None else out * mask[..., None]


class GraphReasoning(nn.Module):
    """A graph over one modality's nodes and its residual GCN (eqs 21-25).

    Used twice in CCCL, with separate weights: over regions with a fully
    connected graph (V̂ = f(V, W_e^V)) and over words with the dependency
    graph (T̂ = f(T, W_e^T)). ``forward(x, mask, adjacency=None)``: x (B, N, d),
    mask (B, N) bool, adjacency (B, N, N) bool or None for a full graph.
    Returns (B, N, d).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.edges = GraphEdges(dim)
        self.gcn = ResidualGCN(dim)

    def edge_weights(self, x, mask, adjacency=None):
        """The normalised edge matrix W_e (B, N, N) this module reasons with."""
        allowed = full_adjacency(mask)
        if adjacency is not None:
            allowed = allowed & adjacency
        # Self-loops keep every valid row non-empty (readings appendix, "Eq 23").
        eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
        return self.edges(x, allowed | (eye & mask[:, :, None]))

    def forward(self, x, mask, adjacency=None):
        return self.gcn(x, self.edge_weights(x, mask, adjacency), mask)


class CrossGRU(nn.Module):
    """Global relation GRU reading the cross vector first (eq 26).

    v^R = GRU^V([t^S, v̂_1, …, v̂_n])_last and t^R = GRU^T([v^S, t̂_1, …, t̂_m])_last.
    Because the *other* item's vector comes first, every (image, text) pair
    needs its own recurrence: this is the model's dominant cost. What does
    not depend on the pair, the input projections W_ih x + b_ih of the nodes,
    is computed once per item; the recurrence then runs for all pairs at once.
    An evaluator keeps :meth:`input_projection` of the nodes and
    :meth:`cross_state` of the cross vectors per item and calls :meth:`recur`
    (or its regrouped form :func:`cccl_lite.model.fast.relation_recur`, on the CPU a
    fused C++ kernel) per block of pairs.

    The gates are PyTorch's (``nn.GRUCell`` weights, order r, z, n), so the
    result equals ``nn.GRU`` run on each pair's sequence.

    ``forward(nodes, mask, cross=None)``: nodes (B_x, L, d), mask (B_x, L)
    bool, cross (B_y, d) or None. Returns (B_x, B_y, d): the last valid hidden
    state for every (item, cross item) pair; with ``cross=None`` (the
    "w/o C-GRU" ablation) the GRU reads the nodes only and returns (B_x, 1, d).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.cell = nn.GRUCell(dim, dim)
        self.dim = dim

    def input_projection(self, x: torch.Tensor) -> torch.Tensor:
        """W_ih x + b_ih for every step: (..., d) → (..., 3d), no pair dependence."""
        return nn.functional.linear(x, self.cell.weight_ih, self.cell.bias_ih)

    def step(self, gi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One GRU update from a precomputed input projection gi (..., 3d)."""
        gh = nn.functional.linear(h, self.cell.weight_hh, self.cell.bias_hh)
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return n + z * (h - n)  # = (1 - z) n + z h

    def cross_state(self, cross: torch.Tensor) -> torch.Tensor:
        """h_1 = GRU(h_0 = 0, cross): the state after eq 26's first step, (B_y, d) → (B_y, d).

        It depends on the cross item only, so an evaluator computes it once per item.
        """
        return self.step(self.input_projection(cross), cross.new_zeros(cross.shape[0], self.dim))

    def recur(self, gi_nodes: torch.Tensor, mask: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Eq 26's node steps for every pair, from precomputed node projections.

        gi_nodes (B_x, L, 3d) from :meth:`input_projection`; mask (B_x, L) bool; h the
        start states, (B_x, B_y, d) or broadcastable to it (e.g. (1, B_y, d): then the
        first W_hh h is computed once per cross item). Returns (B_x, B_y, d): each
        pair's last valid state. Padded steps keep h (see module notes).
        """
        # One host sync decides which steps need the mask at all: steps padded for
        # every item change nothing (dropped), steps valid for every item need no where.
        valid = mask.any(0).tolist()
        full = mask.all(0).tolist()
        steps = max((t + 1 for t, v in enumerate(valid) if v), default=0)
        for t in range(steps):
            h_new = self.step(gi_nodes[:, t, None, :], h)
            h = h_new if full[t] else torch.where(mask[:, t, None, None], h_new, h)
        return h.expand(gi_nodes.shape[0], -1, -1)

    def forward(self, nodes: torch.Tensor, mask: torch.Tensor, cross: torch.Tensor | None = None):
        gi_nodes = self.input_projection(nodes)  # (B_x, L, 3d), once per item
        if cross is None:
            h = nodes.new_zeros(nodes.shape[0], 1, self.dim)
        else:
            # The first step starts from h = 0, so it depends on the cross item only.
            h = self.cross_state(cross)[None]  # (1, B_y, d), broadcast over B_x
        return self.recur(gi_nodes, mask, h)
