"""cccl_lite: CCCL (Perceive, Reason, and Align) rebuilt equation by equation."""

__version__ = "0.1.0"
