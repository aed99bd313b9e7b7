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

NaN and Inf are compared exactly, not within a tolerance: a NaN must face a NaN and an Inf the
same-signed Inf, element for element, and nothing else does. A kernel that turns NaN into 0 (as
``tl.maximum`` can) or Inf into NaN (``Inf * 0``) fails however close its finite values are. The
tolerance then applies to the elements that are finite in both, with ``magnitude`` taken over
the finite values of the reference.
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
    if not math.isfinite(magnitude):
        raise ValueError(f"magnitude must be finite, got {magnitude}: an infinite bound would pass anything; "
                         "use largest_finite(expected)")
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


def largest_finite(t: torch.Tensor) -> float:
    """The largest finite ``|value|`` of ``t`` (1.0 when it has none): the ``magnitude`` to check with."""
    values = t.detach().double().abs()
    values = values[torch.isfinite(values)]
    return float(values.max()) if values.numel() else 1.0


def _nonfinite_mismatch(a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """True where ``a`` and ``e`` disagree about NaN, +Inf or -Inf (float64 tensors of one shape)."""
    inf = math.inf
    return (a.isnan() != e.isnan()) | ((a == inf) != (e == inf)) | ((a == -inf) != (e == -inf))


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference over the elements finite in both, computed in float64.

    ``inf`` when NaN/Inf placement differs (see :func:`assert_close`); 0.0 for empty tensors.
    """
    if actual.numel() == 0:
        return 0.0
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    if _nonfinite_mismatch(a, e).any():
        return math.inf
    finite = torch.isfinite(a)
    if not finite.any():
        return 0.0
    return float((a[finite] - e[finite]).abs().max())


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

    ``expected`` should be a float64 reference. NaN and Inf must match exactly (NaN where the
    reference has NaN, an Inf of the same sign where it has one); the message then gives the
    count and the first index where they differ. Finite elements must be within the bound;
    ``magnitude`` defaults to :func:`largest_finite` of ``expected``. ``dtype`` defaults to
    ``actual.dtype``; pass ``"tf32"`` for float32 computed with TF32 dot products. The message
    names the worst element, its index and both values.
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if actual.numel() == 0:
        return
    dtype = actual.dtype if dtype is None else dtype
    magnitude = largest_finite(expected) if magnitude is None else magnitude
    tol = tolerance(dtype, reduction_length, magnitude)
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    mismatch = _nonfinite_mismatch(a, e)
    if mismatch.any():
        index = tuple(int(i) for i in torch.nonzero(mismatch)[0])
        raise AssertionError(
            f"{what}: NaN/Inf placement differs from the reference at {int(mismatch.sum())} of {a.numel()} "
            f"elements; first at index {index}: got {a[index].item()}, expected {e[index].item()}"
        )
    finite = torch.isfinite(e)  # the same elements are finite in a
    err = torch.where(finite, a - e, 0.0).abs()
    allowed = tol.atol + tol.rtol * torch.where(finite, e, 0.0).abs()
    ratio = torch.where(err == 0, 0.0, err / allowed)  # exact agreement passes even where the bound is 0
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
