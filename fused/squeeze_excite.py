"""Fused SEBlock: squeeze (pool), excite (tiny MLP) and scale as three small Triton kernels
(the excite kernel sums a split squeeze's partial means, so no fourth launch on large maps).

Eager PyTorch runs six kernels (pool, linear, PReLU, linear, sigmoid, multiply). Inside an
IRBlock the scale is fused further into the residual epilogue (see :mod:`fused.residual_blocks`).
"""

from __future__ import annotations

import torch

import reference
from reference.checks import check_feature_map

from .base import FusedModule
from .kernels.squeeze_excite import se_scale_residual_act, se_squeeze_excite


def se_parameters(se: reference.SEBlock) -> tuple[torch.Tensor, ...]:
    """The excite MLP's parameters in the order the kernels take them."""
    fc1, prelu, fc2 = se.fc[0], se.fc[1], se.fc[2]
    return fc1.weight, fc1.bias, prelu.weight, fc2.weight, fc2.bias


def se_gate(se: reference.SEBlock, y: torch.Tensor) -> torch.Tensor:
    """The per-(n, c) gate ``sigmoid(fc2(prelu(fc1(mean(y)))))`` as float32 ``[N, C]``.

    With fewer channels than the reduction (16), ``fc1`` has no outputs, so ``fc2`` sees an empty
    vector and the reference's gate is ``sigmoid(fc2.bias)`` for every sample, whatever ``y``
    holds: computed here directly (the MLP kernel needs a hidden unit).
    """
    fc1, fc2 = se.fc[0], se.fc[2]
    if fc1.out_features == 0:
        bias = fc2.bias.detach().float() if fc2.bias is not None else torch.zeros(fc2.out_features, device=y.device)
        return torch.sigmoid(bias).expand(y.shape[0], fc2.out_features)
    return se_squeeze_excite(y, *se_parameters(se))  # two launches: the excite sums the squeeze's splits


class FusedSEBlock(FusedModule, reference.SEBlock, block_types=("SEBlock",)):
    """``reference.SEBlock`` run as squeeze, excite and scale kernels (parameters read as they are).

    Under ``torch.autocast`` it keeps its input's dtype, as the reference's ``x * gate`` does;
    the excite MLP, which autocast would run in the autocast dtype, runs in float32.
    """

    autocast_casts_inputs = False

    def fold(self, dtype, device):  # nothing to fold: the kernels upcast the MLP's parameters
        return {}

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.fc[0].in_features, f"SEBlock ({self.facefuse_path or 'fused'})")
        return se_scale_residual_act(x, se_gate(self, x))

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference.SEBlock.forward(self, x)
