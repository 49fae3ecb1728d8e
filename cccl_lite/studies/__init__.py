"""Studies: the experiments whose results files the chapters read.

``dual_study`` (accuracy against cost, chapters 1 and 10) sits above the
others: ``ablate`` (Table 6, chapter 7), ``plateau`` (eq 33 at the plateau,
chapter 6), ``diagnose`` (chapter 11), ``sensitivity`` (Sec. 4.4, chapter 7),
``pretrained`` (the shipped model and ``ship``) and ``probes`` (chapter 8).
Each one trains and evaluates through the engine and writes its rows
resumably, through one reader and writer of results files (``results``);
none is imported by the engine or the model.
"""
