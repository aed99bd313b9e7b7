"""The one tolerance policy: how close a fused result must be to a float64 reference.

Every check in the project (tests, lessons, the profiler's error column) goes through
:func:`assert_close` or :func:`max_error`, so the tolerances live here and nowhere else.

A result computed in ``dtype`` from inputs stored in ``dtype`` carries two kinds of error:
rounding of the stored output (relative, about one unit roundoff ``u`` of ``dtype``) and the
error accumulated over a reduction of length ``L`` (for a convolution ``C_in * kh * kw``),
which grows like ``sqrt(L)`` times the magnitude of the terms. With ``magnitude`` the largest
absolute value of the reference, an element passes when

    |actual - expected| <= SAFETY * u * (|expected| + sqrt(L) * magnitude)

``u`` is the unit roundoff of the operand precision: float32 ``2**-24`` (TF32 ``2**-11``),
float16 ``2**-11``, bfloat16 ``2**-8``. A wrong tap, a wrong channel or an off-by-one in the
padding moves results by O(magnitude), far above this bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Unit roundoff of each operand precision ("tf32" for float32 inputs with TF32 dot products).
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    "tf32": 2.0**-11,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}

#: Head-room over the bound above; one number for every dtype and kernel.
SAFETY = 8.0


@dataclass(frozen=True)
class Tolerance:
    """Per-element bound ``atol + rtol * |expected|`` for one dtype and reduction length."""

    rtol: float
    atol: float


def tolerance(dtype, reduction_length: int, magnitude: float = 1.0) -> Tolerance:
    """The tolerance for a result in ``dtype`` (or ``"tf32"``) over a reduction of given length."""
    if dtype not in UNIT_ROUNDOFF:
        raise TypeError(f"no tolerance defined for dtype {dtype}")
    u = UNIT_ROUNDOFF[dtype]
    length = max(int(reduction_length), 1)
    return Tolerance(rtol=SAFETY * u, atol=SAFETY * u * math.sqrt(length) * magnitude)


def reduction_length(module) -> int:
    """The longest reduction inside ``module``: a conv's ``C_in/groups * kh * kw`` or a Linear's width.

    The ``reduction_length`` to check a whole block or model with.
    """
    from torch import nn

    lengths = [1]
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            lengths.append(m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        elif isinstance(m, nn.Linear):
            lengths.append(m.in_features)
    return max(lengths)


def _magnitude(expected: torch.Tensor) -> float:
    return float(expected.detach().abs().max()) if expected.numel() else 1.0


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference (0.0 for empty tensors), computed in float64."""
    if actual.numel() == 0:
        return 0.0
    return float((actual.detach().double() - expected.detach().double()).abs().max())


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    dtype=None,
    reduction_length: int = 1,
    magnitude: float | None = None,
    what: str = "result",
) -> None:
    """Raise AssertionError unless ``actual`` is within the policy's bound of ``expected``.

    ``expected`` should be a float64 reference. ``dtype`` defaults to ``actual.dtype``; pass
    ``"tf32"`` for float32 computed with TF32 dot products. The message names the worst element,
    its index and both values.
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if actual.numel() == 0:
        return
    dtype = actual.dtype if dtype is None else dtype
    magnitude = _magnitude(expected) if magnitude is None else magnitude
    tol = tolerance(dtype, reduction_length, magnitude)
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    if not torch.isfinite(a).all() and not torch.equal(torch.isfinite(a), torch.isfinite(e)):
        bad = tuple(int(i) for i in torch.nonzero(~torch.isfinite(a))[0])
        raise AssertionError(f"{what}: non-finite value {a[bad].item()} at index {bad}")
    err = (a - e).abs()
    allowed = tol.atol + tol.rtol * e.abs()
    ratio = err / allowed
    worst = int(torch.argmax(torch.nan_to_num(ratio, nan=math.inf)))
    if ratio.reshape(-1)[worst] > 1:
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
        n_bad = int((ratio > 1).sum())
        raise AssertionError(
            f"{what}: {n_bad} of {a.numel()} elements out of tolerance ({dtype}, reduction "
            f"length {reduction_length}); worst at index {index}: got {a[index].item():.8g}, "
            f"expected {e[index].item():.8g}, |diff| {err[index].item():.3g} > allowed "
            f"{allowed[index].item():.3g} (rtol {tol.rtol:.3g}, atol {tol.atol:.3g})"
        )
