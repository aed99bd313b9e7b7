"""Fused FPN: each lateral 1x1 conv adds the upsampled coarser level in its epilogue.

The reference writes a lateral map, materialises the nearest-upsampled coarser map, reads both
and writes their sum. Here the lateral conv + BN + activation kernel reads the coarser map at each
pixel's nearest source position and writes the sum once
(:func:`fused.kernels.fpn.lateral_upsample_add`). The 3x3 merges are conv_bn blocks, which
:func:`fused.fuse` swaps for the conv kernel like any other.
"""

from __future__ import annotations

import reference

from .base import FusedModule, conv_weights
from .conv_bn_act import conv_bn_activation, unsupported_conv
from .kernels.fpn import lateral_upsample_add

LATERALS = ("output1", "output2", "output3")


class FusedFPN(FusedModule, reference.FPN, block_types=("FPN",)):
    """``reference.FPN`` with the top-down upsample-and-add fused into the lateral convs."""

    fuses_children = True  # merge1 and merge2 are conv_bn blocks
    handled_children = LATERALS

    @classmethod
    def unsupported_reason(cls, fpn: reference.FPN) -> str | None:
        for name in LATERALS:
            conv = getattr(fpn, name)[0]
            if conv.kernel_size != (1, 1) or conv.stride != (1, 1):
                return f"{name} is not a 1x1 stride-1 conv"
            reason = unsupported_conv(conv)
            if reason is not None:
                return f"{name}: {reason}"
        return None

    def fold(self, dtype, device):
        return {name: conv_weights(getattr(self, name)[0], getattr(self, name)[1], dtype, device) for name in LATERALS}

    def fused_forward(self, input):
        finest, middle, coarsest = self.check_inputs(input)
        f = self.folded(finest.dtype, finest.device)
        precision = self.dot_precision(finest)

        def lateral(name, x, coarse=None):
            activation, slope = conv_bn_activation(getattr(self, name))
            return lateral_upsample_add(x, *f[name], coarse, activation=activation, slope=slope, precision=precision)

        output3 = lateral("output3", coarsest)
        output2 = self.merge2(lateral("output2", middle, output3))
        output1 = self.merge1(lateral("output1", finest, output2))
        return [output1, output2, output3]

    def reference_forward(self, input):
        return reference.FPN.forward(self, input)
