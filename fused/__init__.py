"""Triton fused kernels for the reference blocks, the switch that swaps them in, and profiling."""

from . import runtime  # noqa: F401  (first: sets TRITON_INTERPRET before any kernel is decorated)
from .runtime import backend
from .tolerance import assert_close, max_error, tolerance

__all__ = ["backend", "assert_close", "max_error", "tolerance"]
