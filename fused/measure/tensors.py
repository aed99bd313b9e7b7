"""Tensors inside nested arguments, and what a module call computes and moves.

A block's arguments and outputs may be one tensor or several (a list of three maps for the FPN,
a tuple of three outputs for RetinaFace): these helpers walk lists, tuples and dicts, so the
profiler and the benchmark treat every block alike.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..tolerance import assert_close, max_error


def tensors(obj):
    """Every tensor in ``obj`` (a tensor, or lists, tuples and dicts of them), in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from tensors(o)


def map_tensors(obj, fn):
    """``obj`` with every tensor ``t`` replaced by ``fn(t)``; containers are rebuilt, the rest kept."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(map_tensors(o, fn) for o in obj)
    if isinstance(obj, list):
        return [map_tensors(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def clone(obj):
    """A detached copy of every tensor in ``obj``."""
    return map_tensors(obj, lambda t: t.detach().clone())


def double(obj):
    """Every floating-point tensor of ``obj`` in float64 (detached); other tensors copied as they are."""
    return map_tensors(obj, lambda t: t.detach().double() if t.is_floating_point() else t.detach().clone())


def nbytes(obj) -> int:
    """Bytes of every tensor in ``obj``."""
    return sum(t.numel() * t.element_size() for t in tensors(obj))


def shapes(obj) -> str:
    """The shapes of the tensors in ``obj``: ``"1x3x64x64;1x8x32x32"``."""
    return ";".join("x".join(str(d) for d in t.shape) for t in tensors(obj))


def state_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and floating-point buffers (BN statistics), each counted once."""
    seen, total = set(), 0
    for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def moves_no_data(module: nn.Module) -> bool:
    """True for modules that return their input or a view of it (no kernel runs): identities,
    flattening, and dropout in eval mode."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return not module.training
    return isinstance(module, (nn.Identity, nn.Flatten, nn.Unflatten))


def leaf_flops(module: nn.Module, output) -> int:
    """2 x MACs of one call of a Conv2d or Linear (0 for every other module)."""
    out = next(tensors(output), None)
    if out is None:
        return 0
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return 2 * out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return 2 * out.numel() * module.in_features
    return 0


def compare(actual, expected, *, reduction_length: int, what: str, dtype=None) -> tuple[float, str | None]:
    """Check every output tensor of a fused run against its float64 reference with
    :func:`fused.tolerance.assert_close`: ``(largest absolute error, first failure message or None)``.

    ``dtype`` is the tolerance's dtype (default: the actual tensor's). A different number of
    outputs is a failure whose error is NaN (it cannot be computed); a shape mismatch counts as an
    infinite error.
    """
    got, want = list(tensors(actual)), list(tensors(expected))
    if len(got) != len(want):
        return math.nan, f"{what}: {len(got)} output tensors, expected {len(want)}"
    err, message = 0.0, None
    for a, e in zip(got, want):
        err = max(err, max_error(a, e) if a.shape == e.shape else math.inf)
        try:
            assert_close(a, e, dtype=dtype, reduction_length=reduction_length, what=what)
        except AssertionError as exc:
            message = message or str(exc).splitlines()[0]
    return err, message
