"""The CCCL model: configuration, ablation switches, and the all-pairs forward.

Perceive (``perceive``), Reason (``reason``) and Align (``align``) assembled
as in Fig. 2 of the paper; the scores go to the hybrid loss (``loss``).
Taught across chapters 2-5; the ablations in chapter 7.

``CCCL.forward`` scores every image of a batch against every text. It is
split into :meth:`CCCL.encode_images`, :meth:`CCCL.encode_texts` (work that
depends on one item only) and :meth:`CCCL.score` (work per pair), so an
evaluator can encode each item once and score in chunks.

The model chooses how the per-pair work is computed (chapter 10):
``fast=True`` (the default of :meth:`CCCL.score` and ``forward``) runs
:func:`cccl_lite.model.fast.local_similarity` and :func:`cccl_lite.model.fast.relation_recur`,
the same equations regrouped for less work (and, on the CPU without autograd,
run by the fused C++ kernels of :mod:`cccl_lite.model.fast.fused` where they build);
``fast=False`` runs them as printed (:meth:`CCCL.similarity_vectors`, the
book's reference). ``pair_chunk=N`` scores at most N pairs at a time and,
under autograd, recomputes each block's activations in the backward pass
(``torch.utils.checkpoint``): the same loss and gradients with the memory of
one block of pairs instead of all B_i x B_t.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cccl_lite.model.align import GlobalBranch, LocalBranch, RelationSimilarity
from cccl_lite.model.fast import local_similarity, local_similarity_pairs, relation_recur
from cccl_lite.model.loss import SimilarityMLP, fuse_scores
from cccl_lite.model.perceive import TextualEmbedding, VisualEmbedding
from cccl_lite.model.reason import CrossGRU, GraphReasoning

__all__ = ["ABLATIONS", "LITE_CENTRE_SCALE", "CCCLConfig", "CCCL",
           "ImageEncoding", "TextEncoding", "SEQUENCE_FIELDS", "select_rows"]

# Table 6 of the paper, spelled as printed.
ABLATIONS = (
    "w/o V-CPC", "w/o T-CPC", "w/o CPC", "w/o POS", "w/o BERT",
    "w/o B-1", "w/o B-2", "w/o B-3", "w/o VSF",
    "w/o A-Pool", "w/o M-Pool",
    "w/o S-NLP", "w/o C-GRU",
    "w/o SC-loss", "w/o MLP",
)

# What each ablation switches off. "w/o B-1" keeps Branch 1's vectors v^S, t^S
# (eqs 13-14) because Branch 3's GRUs read them first (eq 26; the paper is
# silent): it drops sim^S from F and from L_c. "w/o BERT" needs vocab_size.
_ABLATION_CHANGES = {
    "w/o V-CPC": {"use_visual_cpc": False},
    "w/o T-CPC": {"use_text_cpc": False},
    "w/o CPC": {"use_visual_cpc": False, "use_text_cpc": False},
    "w/o POS": {"use_position": False},
    "w/o BERT": {"use_bert": False},
    "w/o B-1": {"use_branch1": False},
    "w/o B-2": {"use_branch2": False},
    "w/o B-3": {"use_branch3": False},
    "w/o VSF": {"use_vsf": False},
    "w/o A-Pool": {"use_avg_pool": False},
    "w/o M-Pool": {"use_max_pool": False},
    "w/o S-NLP": {"use_syntax": False},
    "w/o C-GRU": {"use_cross_gru": False},
    "w/o SC-loss": {},  # λ 0: a change of the recipe (cccl_lite.engine.recipes)
    "w/o MLP": {"use_mlp": False},
}
assert tuple(_ABLATION_CHANGES) == ABLATIONS


# The synthetic scenes' region features have a mean L2 norm of about 23 (23.1
# on small seed 0's train split; 23.4 on its first 200 images, where this was
# read): the lite config's centre_scale, and chapter 11's rows with the centre
# in eq 8: it puts the box centre at the features' scale, as the centre oracle
# (cccl_lite.studies.probes.write_oracle) does.
LITE_CENTRE_SCALE = 23.4


@dataclass(frozen=True)
class CCCLConfig:
    """What a CCCL model is: its sizes (Table 1), the readings it takes and
    every Table 6 switch; the defaults are the paper's. How it trains (lr,
    epochs, batch size, Δ, λ, ...) is its recipe,
    :class:`cccl_lite.engine.recipes.Recipe`; the presets (lite, paper) pair
    the two (``cccl_lite.engine.recipes.PRESETS``).

    Names: region_dim d_F, num_regions n, word_dim d_E, embed_dim d, sim_dim P,
    attention_temperature λ of eq 17.
    """

    region_dim: int = 2048
    num_regions: int = 36
    word_dim: int = 768
    embed_dim: int = 1024
    sim_dim: int = 256
    attention_temperature: float = 9.0
    vocab_size: int = 0  # word ids for "w/o BERT"; set from the data's vocabulary
    # Eq 9's six-tuple: "ours" or CAMERA's "camera" (cccl_lite.model.perceive.position_features).
    position_tuple: str = "ours"
    # Eq 10: "product" Q̂ ∘ σ(S̃ W_S + b_S) as printed, or "sum" Q̂ + S̃ W_S + b_S
    # (cccl_lite.model.perceive.VisualEmbedding; chapter 11 measures both).
    position_fusion: str = "product"
    # Eq 8 reading of ours: the box centre as two more region-feature columns,
    # times this scale (0 = off, as printed; cccl_lite.model.perceive.VisualEmbedding).
    centre_scale: float = 0.0
    # Eq 11 reading of ours: a Bi-GRU over the frozen word vectors before W_E
    # (cccl_lite.model.perceive.TextualEmbedding); ignored under "w/o BERT".
    word_gru: bool = False
    # Table 6 switches (all True = the full model).
    use_visual_cpc: bool = True
    use_text_cpc: bool = True
    use_position: bool = True
    use_bert: bool = True
    use_branch1: bool = True
    use_branch2: bool = True
    use_branch3: bool = True
    use_vsf: bool = True
    use_max_pool: bool = True
    use_avg_pool: bool = True
    use_syntax: bool = True
    use_cross_gru: bool = True
    use_mlp: bool = True
    ablation: str | None = None

    def with_ablation(self, name: str) -> "CCCLConfig":
        """A copy of this config with one Table 6 ablation switched on."""
        if name not in _ABLATION_CHANGES:
            raise ValueError(f"unknown ablation {name!r}; expected one of: {', '.join(ABLATIONS)}")
        return dataclasses.replace(self, ablation=name, **_ABLATION_CHANGES[name])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CCCLConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"CCCLConfig: unknown fields {unknown}")
        for f in dataclasses.fields(cls):  # an edited checkpoint: name the field
            want, value = type(f.default), d.get(f.name, f.default)
            if f.default is None or f.default is dataclasses.MISSING:
                continue
            ok = (isinstance(value, bool) if want is bool
                  else isinstance(value, (int, float)) and not isinstance(value, bool)
                  if want is float else isinstance(value, want) and not isinstance(value, bool))
            if not ok:
                raise ValueError(f"config field '{f.name}' should be {want.__name__}, got "
                                 f"{type(value).__name__} {str(value)[:40]!r}")
        return cls(**d)


class ImageEncoding(NamedTuple):
    """What CCCL computes once per image: V (B, n, d), mask (B, n),
    v^S (B, d) (eqs 13-14) and V̂ (B, n, d) (eq 25; None without Branch 3).

    Eq 26's per-image parts (None when not applicable; :meth:`CCCL.score`
    recomputes a missing one): ``gru_input`` W_ih v̂_i + b_ih (B, n, 3d) of the
    visual GRU; ``cross_state`` (B, d), the text GRU's state after reading v^S;
    under "w/o C-GRU", ``relation`` v^R (B, d) itself.
    """

    v: torch.Tensor
    mask: torch.Tensor
    global_vec: torch.Tensor
    graph: torch.Tensor | None
    gru_input: torch.Tensor | None = None
    cross_state: torch.Tensor | None = None
    relation: torch.Tensor | None = None


class TextEncoding(NamedTuple):
    """What CCCL computes once per text: T (B, m, d), mask (B, m),
    t^S (B, d) (eqs 13-14) and T̂ (B, m, d) (eq 25; None without Branch 3).

    Eq 26's per-text parts, as in :class:`ImageEncoding`: ``gru_input``
    (B, m, 3d) of the text GRU, ``cross_state`` (B, d) of the visual GRU after
    reading t^S, or ``relation`` t^R (B, d) under "w/o C-GRU".
    """

    t: torch.Tensor
    mask: torch.Tensor
    global_vec: torch.Tensor
    graph: torch.Tensor | None
    gru_input: torch.Tensor | None = None
    cross_state: torch.Tensor | None = None
    relation: torch.Tensor | None = None


# Fields of an encoding laid out (B, L, ...): one entry per region or word.
SEQUENCE_FIELDS = frozenset({"v", "t", "mask", "graph", "gru_input"})


def select_rows(enc, rows, length: int | None = None):
    """Items ``rows`` of an :class:`ImageEncoding` or :class:`TextEncoding`.

    ``rows``: a slice (the fields come back as views) or a 1-D index tensor
    (copies), applied to every field's first (batch) axis. ``length``: also
    cut the sequence fields (:data:`SEQUENCE_FIELDS`, (B, L, ...)) to their
    first ``length`` positions, e.g. to a block's longest item. None fields
    stay None. Returns an encoding of the same type.
    """
    def pick(name, x):
        if x is None:
            return None
        if length is not None and name in SEQUENCE_FIELDS:
            x = x[:, :length]
        return x[rows]

    return type(enc)(*(pick(name, x) for name, x in zip(enc._fields, enc)))


class CCCL(nn.Module):
    """CCCL: context-perceived embeddings, three branches, shared MLP (Fig. 2).

    ``forward(regions, positions, region_mask, words, word_mask,
    word_adjacency)``: regions (B_i, n, d_F); positions (B_i, n, 6) from
    ``position_features`` (may be None under "w/o POS"); region_mask (B_i, n)
    bool; words (B_t, m, d_E) float (or (B_t, m) int64 ids under "w/o BERT");
    word_mask (B_t, m) bool; word_adjacency (B_t, m, m) bool dependency arcs
    (ignored under "w/o S-NLP"). Returns ``(F, (S_S, S_O, S_R))``, each
    (B_i, B_t): every image scored against every text; F is their mean
    (eq 32). A branch removed by an ablation gives None in its place.
    Keywords ``fast`` and ``pair_chunk``: see :meth:`score`.

    Initialisation (the paper names none): PyTorch's default for every
    layer, the VSF matrices W of eqs 15-20 and 27 Xavier-uniform
    (:mod:`cccl_lite.model.align`; a bare parameter has no default).
    """

    def __init__(self, config: CCCLConfig):
        super().__init__()
        c = self.config = config
        if not c.use_bert and c.vocab_size <= 0:
            raise ValueError("'w/o BERT' needs config.vocab_size: the data's vocabulary size")
        if not (c.use_branch1 or c.use_branch2 or c.use_branch3):
            raise ValueError("CCCLConfig: at least one branch must be on")
        d, p = c.embed_dim, c.sim_dim
        self.visual = VisualEmbedding(c.region_dim, d, c.use_position, c.use_visual_cpc,
                                      c.position_fusion, c.centre_scale, c.position_tuple)
        self.textual = TextualEmbedding(c.word_dim, d, c.use_text_cpc,
                                        None if c.use_bert else c.vocab_size, c.word_gru)
        # Branch 1's vectors exist whenever Branch 1 scores or Branch 3 reads them.
        self.global_branch = GlobalBranch(d, p, c.use_max_pool, c.use_avg_pool, c.use_vsf,
                                          scores=c.use_branch1)
        self.local_branch = LocalBranch(d, p, c.attention_temperature, c.use_vsf) \
            if c.use_branch2 else None
        if c.use_branch3:
            self.visual_graph = GraphReasoning(d)
            self.text_graph = GraphReasoning(d)
            self.visual_gru = CrossGRU(d)
            self.text_gru = CrossGRU(d)
            self.relation = RelationSimilarity(d, p, c.use_vsf)
        sim_in = p if c.use_vsf else 1
        self.mlp = SimilarityMLP(sim_in, p, depth=2 if c.use_mlp else 1)

    # ---- per item -------------------------------------------------------
    def encode_images(self, regions, positions, region_mask) -> ImageEncoding:
        """V (eqs 8-10), v^S (eqs 13-14), V̂ (eqs 21, 24-25) and eq 26's
        per-image GRU parts for each image."""
        c = self.config
        v = self.visual(regions, positions if c.use_position else None, region_mask)
        v_s = self.global_branch.image_vector(v, region_mask)
        graph = self.visual_graph(v, region_mask) if c.use_branch3 else None
        return ImageEncoding(v, region_mask, v_s, graph,
                             *self._gru_parts(graph, region_mask, v_s, image=True))

    def encode_texts(self, words, word_mask, word_adjacency=None) -> TextEncoding:
        """T (eqs 11-12), t^S (eqs 13-14) and T̂ (eqs 22-25) for each text."""
        c = self.config
        t = self.textual(words, word_mask)
        t_s = self.global_branch.text_vector(t, word_mask)
        graph = None
        if c.use_branch3:
            if c.use_syntax and word_adjacency is None:
                raise ValueError("CCCL: word_adjacency is required (or use 'w/o S-NLP')")
            graph = self.text_graph(t, word_mask, word_adjacency if c.use_syntax else None)
        return TextEncoding(t, word_mask, t_s, graph,
                            *self._gru_parts(graph, word_mask, t_s, image=False))

    def _gru_parts(self, graph, mask, global_vec, image: bool):
        """(gru_input, cross_state, relation) of images' or texts' items (eq 26).

        Done here, once per item, because they do not depend on the pair; the
        pair-wise recurrence (:meth:`relation_vectors`) reuses them.
        """
        if graph is None:
            return None, None, None
        own_gru, other_gru = ((self.visual_gru, self.text_gru) if image
                              else (self.text_gru, self.visual_gru))
        if not self.config.use_cross_gru:
            # Without the cross vector, the whole GRU pass is per item.
            return None, None, own_gru(graph, mask)[:, 0]
        return own_gru.input_projection(graph), other_gru.cross_state(global_vec), None

    # ---- per pair -------------------------------------------------------
    def relation_vectors(self, img: ImageEncoding, txt: TextEncoding, fast: bool = False):
        """v^R, t^R (eq 26) for every pair: each (B_i, B_t, d), or (B_i, 1, d) /
        (1, B_t, d) under "w/o C-GRU" where they no longer depend on the pair.
        ``fast``: :func:`cccl_lite.model.fast.relation_recur` instead of ``recur`` (same result)."""
        vg, tg = self.visual_gru, self.text_gru
        if not self.config.use_cross_gru:
            v_r = img.relation if img.relation is not None else vg(img.graph, img.mask)[:, 0]
            t_r = txt.relation if txt.relation is not None else tg(txt.graph, txt.mask)[:, 0]
            return v_r[:, None], t_r[None]

        gi_v, gi_t, h_v, h_t = self._gru_inputs(img, txt)
        # Start states (1, B, d) broadcast over the other axis inside recur.
        if fast:
            v_r = relation_recur(vg, gi_v, img.mask, h_v[None])
            t_r = relation_recur(tg, gi_t, txt.mask, h_t[None])
        else:
            v_r = vg.recur(gi_v, img.mask, h_v[None])
            t_r = tg.recur(gi_t, txt.mask, h_t[None])
        return v_r, t_r.transpose(0, 1)

    def _gru_inputs(self, img: ImageEncoding, txt: TextEncoding):
        """Eq 26's per-item parts (node projections of images and texts, start
        states from texts and images), precomputed ones reused, else computed now."""
        vg, tg = self.visual_gru, self.text_gru

        def part(value, compute):
            return compute() if value is None else value

        return (part(img.gru_input, lambda: vg.input_projection(img.graph)),
                part(txt.gru_input, lambda: tg.input_projection(txt.graph)),
                part(txt.cross_state, lambda: vg.cross_state(txt.global_vec)),
                part(img.cross_state, lambda: tg.cross_state(img.global_vec)))

    def similarity_vectors(self, img: ImageEncoding, txt: TextEncoding, fast: bool = False):
        """(sim^S, sim^O, sim^R), each (B_i, B_t, P) or None when ablated.
        ``fast``: Branch 2 by :func:`cccl_lite.model.fast.local_similarity` and Branch 3
        by :func:`cccl_lite.model.fast.relation_recur` (same result up to float
        rounding, less work)."""
        c = self.config
        sim_s = sim_o = sim_r = None
        if c.use_branch1:  # no fast variant: see cccl_lite.model.fast.vsf_all_pairs
            sim_s = self.global_branch(img.global_vec, txt.global_vec)
        if c.use_branch2:
            lb = self.local_branch
            sim_o = (local_similarity(lb, img.v, img.mask, txt.t, txt.mask) if fast
                     else lb(img.v, img.mask, txt.t, txt.mask))
        if c.use_branch3:
            sim_r = self.relation(*self.relation_vectors(img, txt, fast))
            sim_r = sim_r.expand(img.v.shape[0], txt.t.shape[0], -1)
        return sim_s, sim_o, sim_r

    def score_pairs(self, img: ImageEncoding, txt: TextEncoding):
        """(F, (S^S, S^O, S^R)) of the aligned pairs (image p, text p) only, each (B,).

        ``img`` and ``txt`` hold B items each (e.g. gathered from a shortlist);
        the same equations as :meth:`score` (Branches 2 and 3 regrouped, as
        ``fast=True``), without scoring the B x B grid.
        """
        if img.v.shape[0] != txt.t.shape[0]:
            raise ValueError(f"CCCL.score_pairs: {img.v.shape[0]} images but "
                             f"{txt.t.shape[0]} texts; pairs need as many of each")
        c = self.config
        sim_s = sim_o = sim_r = None
        if c.use_branch1:
            sim_s = self.global_branch.paired(img.global_vec, txt.global_vec)
        if c.use_branch2:
            sim_o = local_similarity_pairs(self.local_branch, img.v, img.mask, txt.t, txt.mask)
        if c.use_branch3:
            if c.use_cross_gru:
                gi_v, gi_t, h_v, h_t = self._gru_inputs(img, txt)
                # (B, 1, d) start states: one recurrence per pair, none across pairs.
                v_r = relation_recur(self.visual_gru, gi_v, img.mask, h_v[:, None])[:, 0]
                t_r = relation_recur(self.text_gru, gi_t, txt.mask, h_t[:, None])[:, 0]
            else:
                v_r, t_r = self.relation_vectors(img, txt)
                v_r, t_r = v_r[:, 0], t_r[0]
            sim_r = self.relation(v_r, t_r)
        scores = tuple(None if s is None else self.mlp(s) for s in (sim_s, sim_o, sim_r))
        return fuse_scores(scores), scores

    def _branch_scores(self, img: ImageEncoding, txt: TextEncoding, fast: bool):
        return tuple(None if s is None else self.mlp(s)
                     for s in self.similarity_vectors(img, txt, fast))

    def score(self, img: ImageEncoding, txt: TextEncoding, *, fast: bool = True,
              pair_chunk: int | None = None):
        """(F, (S^S, S^O, S^R)) for every pair of the encoded items (eqs 28, 32).

        Each (B_i, B_t). ``fast``: see the module docstring. ``pair_chunk``: at
        most this many pairs per block (rows of images x columns of texts);
        with autograd on, each block is checkpointed (its activations are
        recomputed in the backward pass instead of kept).
        """
        if pair_chunk is None:
            scores = self._branch_scores(img, txt, fast)
            return fuse_scores(scores), scores
        if isinstance(pair_chunk, bool) or not isinstance(pair_chunk, int) or pair_chunk < 1:
            raise ValueError(f"CCCL.score: pair_chunk must be a positive int or None, "
                             f"got {pair_chunk!r}")
        b_i, b_t = img.v.shape[0], txt.t.shape[0]
        cols = min(b_t, pair_chunk)
        rows = max(1, pair_chunk // cols)
        grad = torch.is_grad_enabled()
        blocks = []
        for i in range(0, b_i, rows):
            sub_i = select_rows(img, slice(i, i + rows))
            row = []
            for j in range(0, b_t, cols):
                sub_t = select_rows(txt, slice(j, j + cols))
                if grad:
                    # Non-reentrant: the encodings (NamedTuples) may hold tensors
                    # that need gradients; no RNG is used, so none is saved.
                    row.append(checkpoint(self._branch_scores, sub_i, sub_t, fast,
                                          use_reentrant=False, preserve_rng_state=False))
                else:
                    row.append(self._branch_scores(sub_i, sub_t, fast))
            blocks.append(row)
        scores = tuple(
            None if blocks[0][0][k] is None
            else torch.cat([torch.cat([blk[k] for blk in row], 1) for row in blocks], 0)
            for k in range(3))
        return fuse_scores(scores), scores

    def forward(self, regions, positions, region_mask, words, word_mask, word_adjacency=None,
                *, fast: bool = True, pair_chunk: int | None = None):
        img = self.encode_images(regions, positions, region_mask)
        txt = self.encode_texts(words, word_mask, word_adjacency)
        return self.score(img, txt, fast=fast, pair_chunk=pair_chunk)
