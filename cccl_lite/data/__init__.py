"""Data for cccl_lite: one HDF5 schema (``schema``), the synthetic scenes,
converters for Flickr30K/COCO features, text processing, and the PyTorch dataset.

The schema is documented in :mod:`cccl_lite.data.schema`. The synthetic
scenes: ``synthetic`` writes the file from ``grammar`` (the captions' words,
templates and meaning), ``layout`` (scenes and region boxes), ``features``
(the simulated detector) and ``captions`` (which captions each image gets);
``truth`` and ``difficulty`` read them back. ``text`` splits captions into
words, ``vectors`` turns them into word vectors and ``parsing`` into
dependency heads; ``dataset`` reads a split in batches;
``precomp``, ``tsv`` and ``download`` (with its registry,
``sources``) bring in Flickr30K and COCO.

One-way layer: nothing here imports the model, the losses, the metrics or
the engine (scorers that train are in :mod:`cccl_lite.engine.baselines`).
"""

from cccl_lite.data.schema import (SCHEMA_VERSION, SPLITS, SchemaError, atomic_h5, check_file,
                                   check_heads, split_sizes, write_heads, write_split)

__all__ = ["SCHEMA_VERSION", "SPLITS", "SchemaError", "atomic_h5", "check_file", "check_heads",
           "split_sizes", "write_heads", "write_split"]
