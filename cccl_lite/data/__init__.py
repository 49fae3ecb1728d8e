"""Data for cccl_lite: one HDF5 schema (``schema``), the synthetic scenes,
converters for Flickr30K/COCO features, and the PyTorch dataset.

The schema is documented in :mod:`cccl_lite.data.schema`.
"""

from .schema import (SCHEMA_VERSION, SPLITS, SchemaError, atomic_h5, check_file, check_heads,
                     split_sizes, write_heads, write_split)

__all__ = ["SCHEMA_VERSION", "SPLITS", "SchemaError", "atomic_h5", "check_file", "check_heads",
           "split_sizes", "write_heads", "write_split"]
