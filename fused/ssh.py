"""Fused SSH: five conv+BN layers, the concatenation and the final ReLU in four kernel launches.

The reference computes three branches, copies them into a new tensor with ``torch.cat`` and
runs a ReLU over the result. Here:

* every branch's last conv writes straight into its channel slice of one output buffer (the
  conv kernel takes any strided ``out=`` view), so there is no concatenation copy;
* the final ReLU runs in each branch's epilogue: ReLU of a concatenation is the concatenation of
  the ReLUs, so this is exact;
* ``conv3X3`` and ``conv5X5_1`` read the same input, so they share one launch: their weights are
  stacked into one GEMM whose epilogue applies ``conv5X5_1``'s LeakyReLU to its channels and a
  ReLU (``relu_from``) to ``conv3X3``'s. A slope-0 LeakyReLU would not do: it turns -inf into
  NaN where the reference's ReLU gives 0. That launch writes one channel range of one strided
  view, so ``conv5X5_1``'s output (scratch, read by both longer branches) sits *in front of*
  ``conv3X3``'s channels: at channels ``-quarter .. -1`` of the output, which in memory are the
  ``conv7X7`` channels of the sample (NCHW) or pixel (channels_last) before, and, for the first,
  ``quarter`` extra elements allocated before the output. Those ``conv7X7`` channels are written
  last, after both readers of the scratch have run. So the output is an ordinary dense tensor in
  the input's memory format, like the reference's ``torch.cat`` result (``.view`` works), with no
  copy and only ``quarter * H * W`` (NCHW) or ``quarter`` (channels_last) scratch elements.
"""

from __future__ import annotations

import torch

import reference
from reference.checks import check_feature_map

from .base import FusedModule, kernel_weight
from .conv_bn_act import conv_bn_activation, unsupported_conv
from .folding import fold_batchnorm
from .kernels.common import new_output
from .kernels.conv2d import conv2d_bias_act

BRANCHES = ("conv3X3", "conv5X5_1", "conv5X5_2", "conv7X7_2", "conv7x7_3")


class FusedSSH(FusedModule, reference.SSH, block_types=("SSH",)):
    """``reference.SSH`` with its five conv+BN layers, concatenation and ReLU fused."""

    handled_children = BRANCHES

    @classmethod
    def unsupported_reason(cls, ssh: reference.SSH) -> str | None:
        for name in BRANCHES:
            reason = unsupported_conv(getattr(ssh, name)[0])
            if reason is not None:
                return f"{name}: {reason}"
        return None

    def fold(self, dtype, device):
        def folded(name):
            seq = getattr(self, name)
            weight, bias = fold_batchnorm(seq[0].weight, seq[0].bias, seq[1])
            return weight, bias

        w3, b3 = folded("conv3X3")
        w51, b51 = folded("conv5X5_1")
        out = {"shared": (kernel_weight(torch.cat([w51, w3]), dtype).to(device), torch.cat([b51, b3]).to(device))}
        for name in ("conv5X5_2", "conv7X7_2", "conv7x7_3"):
            weight, bias = folded(name)
            out[name] = (kernel_weight(weight, dtype).to(device), bias.to(device))
        return out

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_channel, f"SSH ({self.facefuse_path or 'fused'})")
        f = self.folded(x.dtype, x.device)
        precision = self.dot_precision(x)
        half, quarter = self.conv3X3[0].out_channels, self.conv5X5_2[0].out_channels
        padding = self.conv3X3[0].padding[0]
        N, _, H, W = x.shape
        channels = half + 2 * quarter
        strides = new_output(x.to("meta"), (N, channels, H, W)).stride()  # the layout to produce (no data)
        front = quarter * strides[1]  # scratch elements in front of the output
        storage = x.new_empty(front + N * channels * H * W)
        out = storage.as_strided((N, channels, H, W), strides, front)
        shared = storage.as_strided((N, quarter + half, H, W), strides, 0)  # [conv5X5_1 | conv3X3]
        scratch = shared[:, :quarter]  # conv5X5_1's output, read by both longer branches
        conv5x5 = out[:, half:half + quarter]
        conv7x7 = out[:, half + quarter:]  # overlaps the scratch: written last

        # conv5X5_1 (its own activation) and conv3X3 (the final ReLU) in one launch.
        activation, slope = conv_bn_activation(self.conv5X5_1)
        conv2d_bias_act(x, *f["shared"], padding=padding, activation=activation, slope=slope, relu_from=quarter,
                        out=shared, precision=precision)
        conv2d_bias_act(scratch, *f["conv5X5_2"], padding=padding, activation="relu", out=conv5x5, precision=precision)
        activation, slope = conv_bn_activation(self.conv7X7_2)
        mid = conv2d_bias_act(scratch, *f["conv7X7_2"], padding=padding, activation=activation, slope=slope, precision=precision,
                              out=new_output(x, (N, quarter, H, W)))  # x's layout: the scratch slice is not dense
        conv2d_bias_act(mid, *f["conv7x7_3"], padding=padding, activation="relu", out=conv7x7, precision=precision)
        return out

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference.SSH.forward(self, x)
