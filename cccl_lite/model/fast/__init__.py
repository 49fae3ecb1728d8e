"""The speed-ups (chapter 10): the per-pair work of scoring, regrouped and fused.

The equation files (:mod:`cccl_lite.model.perceive`, :mod:`cccl_lite.model.reason`,
:mod:`cccl_lite.model.align`, :mod:`cccl_lite.model.loss`) hold each equation once, as
printed. This package holds the same per-pair equations in faster forms,
each equal to its printed form up to float rounding (tests/test_perf.py,
tests/test_fused.py):

* :mod:`.align`: Branch 2's sim^O regrouped (:func:`local_similarity`, and
  :func:`local_similarity_pairs` for aligned pairs) and Branch 1's VSF by
  matrix products (:func:`vsf_all_pairs`, which the model does not use).
* :mod:`.reason`: eq 26's recurrence regrouped (:func:`relation_recur`).
* :mod:`.fused`: two C++ kernels (``csrc/fused_cpu.cpp``) that run the
  regrouped loops tile by tile on the CPU without autograd, compiled on first
  use, and their loader.

Three paths per pair, one choice each: :class:`cccl_lite.model.cccl.CCCL` picks
the printed path (``fast=False``) or the regrouped one (``fast=True``); the
regrouped functions hand their loop to a fused kernel when
:func:`fused.usable` says the kernels are built and the tensors fit (CPU,
float32/64, no autograd, no autocast), else run PyTorch.
"""

from cccl_lite.model.fast import fused
from cccl_lite.model.fast.align import local_similarity, local_similarity_pairs, vsf_all_pairs
from cccl_lite.model.fast.reason import relation_recur

__all__ = ["fused", "local_similarity", "local_similarity_pairs", "vsf_all_pairs",
           "relation_recur"]
