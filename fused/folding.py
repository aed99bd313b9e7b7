"""Folding an eval-mode BatchNorm into the convolution before it."""

from __future__ import annotations

import torch
from torch import nn

from . import runtime


class UnfoldableBatchNorm(ValueError):
    """A BatchNorm whose eval-mode map is not an affine map with finite scale (``running_var +
    eps == 0`` in some channel), so no folded conv reproduces it. Fused modules that meet one
    run their reference forward and record this message as the reason."""


def unfoldable_reason(bn: nn.Module) -> str | None:
    """Why ``bn``'s statistics cannot be folded exactly (``running_var + eps == 0``), or None.

    There ``1/sqrt(var + eps)`` is infinite: the reference gives ``±Inf`` (or NaN where ``y ==
    mean``, or where ``gamma == 0``), depending on the sign of each output's ``y - mean``, which
    no finite folded weight reproduces; folded, every output of the channel would be NaN.
    """
    var = getattr(bn, "running_var", None)
    if var is None or var.is_meta:  # meta tensors (dry runs) hold no values
        return None
    zero = (var.detach().float() + bn.eps) == 0
    if not bool(zero.any()):
        return None
    channels = zero.nonzero().flatten().tolist()
    shown = ", ".join(map(str, channels[:5])) + (f", ... ({len(channels)} in all)" if len(channels) > 5 else "")
    return (f"running_var + eps == 0 in channel(s) {shown} (eps={bn.eps:g}): the BatchNorm's scale 1/sqrt(var + eps) "
            f"is infinite, so it cannot be folded into weights (the reference gives +-Inf or NaN there by the sign "
            f"of y - mean); give the BatchNorm a positive eps to fuse it")



def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the float32 weight and bias of ``conv`` followed by ``bn`` as one convolution.

    In eval mode BatchNorm is a per-channel affine map of the conv output ``y``::

        bn(y) = (y - mean) * gamma / sqrt(var + eps) + beta

    and ``y = w * x + b`` is linear, so with ``s = gamma / sqrt(var + eps)`` per output channel::

        w' = w * s                      (each output channel's filter scaled)
        b' = (b - mean) * s + beta      (b = 0 when the conv has no bias)

    Computed in float32 whatever the model's dtype, so a half-precision model folds without
    extra rounding. Raises ValueError for a BN in training mode or without running statistics
    (its output then depends on the batch, so there is nothing to fold), and
    :class:`UnfoldableBatchNorm` where ``running_var + eps == 0`` (see :func:`unfoldable_reason`;
    not checked while :func:`fused.runtime.tracing` or a CUDA graph captures, or for ``meta``
    tensors, where values cannot be read).
    """
    if bn.training:
        raise ValueError("cannot fold a BatchNorm in training mode: its statistics must update; call model.eval()")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if weight.shape[0] != bn.num_features:
        raise ValueError(f"conv has {weight.shape[0]} output channels but BatchNorm has {bn.num_features} features")
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()  # no reads in a CUDA graph capture
    if not runtime.tracing() and not capturing and not bn.running_var.is_meta:  # meta (inspect's dry run): no values
        reason = unfoldable_reason(bn)
        if reason is not None:
            raise UnfoldableBatchNorm(reason)
    var = bn.running_var.detach().float()
    mean = bn.running_mean.detach().float()
    gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    folded_weight = weight.detach().float() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    conv_bias = bias.detach().float() if bias is not None else torch.zeros_like(mean)
    folded_bias = (conv_bias - mean) * scale + beta
    return folded_weight, folded_bias


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as ``x * scale + shift`` per channel, in float32."""
    ones = torch.ones(bn.num_features, device=bn.running_var.device).reshape(-1, 1)
    scale, shift = fold_batchnorm(ones, None, bn)
    return scale.reshape(-1), shift


def fold_input_affine(weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                      padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-channel affine ``x * scale + shift`` applied *before* a zero-padded conv, folded.

    The padding is zeros after the affine, so the shift must not reach padded pixels and cannot
    go into a plain bias. By linearity::

        conv(pad(x * scale + shift), w) = conv(pad(x), w * scale[c]) + sum over the taps (r, s)
                                          that read a real pixel of tap[r, s]

    with ``tap[r, s, k] = sum_c shift[c] * w[k, c, r, s]``. Which taps read a real pixel depends
    only on how many fall off each side of the image: ``a, b, c, d`` in ``0..padding`` (top,
    bottom, left, right). So the second term is a table ``border_bias[((a*P + b)*P + c)*P + d, k]``
    (``P = padding + 1``) of the sums of ``tap[a:R-b, c:R-d, k]``, which
    :func:`fused.kernels.conv2d.conv2d_bias_act` adds per output pixel, and the conv's main loop
    loads its input as is. Returns the float32 folded weight ``[K, C, R, R]`` and the float32
    ``border_bias`` ``[P**4, K]``, both computed in float64. NaN or Inf in ``scale``/``shift``
    propagate as in the unfolded form (each real tap's ``Inf * w`` enters its sum).
    """
    w64 = weight.detach().double()
    K, C, R, S = w64.shape
    folded = w64 * scale.detach().double().reshape(1, C, 1, 1)
    tap = torch.einsum("kcrs,c->rsk", w64, shift.detach().double())
    P = padding + 1
    rows = [tap[a:R - b, c:S - d].sum((0, 1)) for a in range(P) for b in range(P) for c in range(P) for d in range(P)]
    return folded.float(), torch.stack(rows).float().contiguous()
