"""The model: CCCL's equations and the assembled model (chapters 2-5, 10).

Layers inside, each importing only those below it: ``cccl`` (CCCL assembled;
it chooses the plain or the regrouped per-pair path) > ``fast`` (regrouped
per-pair paths and the fused C++ kernels, chapter 10) > ``loss`` (eqs 26-34)
> ``align`` (eqs 17-25) > ``reason`` (eqs 11-16) > ``perceive`` (eqs 1-10).
One printed path per equation lives in the four equation modules; nothing
here reads data files, trains or scores a split.
"""
