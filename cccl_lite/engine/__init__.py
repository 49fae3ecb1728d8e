"""The engine: training, scoring and evaluation, checkpoints and presets (chapter 6).

Layers inside: ``train`` > ``dual`` (the dual-encoder baseline's model and
loop) > ``evaluate``, ``collapse``, ``baselines`` > ``scoring``,
``checkpoint``, ``departures``, ``recipes`` (:class:`~cccl_lite.engine.recipes.Recipe`,
``RunOptions`` and ``PRESETS``), ``runtime`` > ``metrics``, ``costs``. It uses the
model and the data layers below it and knows nothing of the studies, the
book helpers or the command line above it.
"""
