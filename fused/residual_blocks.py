"""Fused residual blocks: IRBlock (ArcFace), BasicBlock and Bottleneck (ResNet).

Every conv runs in the conv kernel with its BatchNorm folded; the residual add and the final
activation happen in the epilogue of the last conv, so the block writes each tensor once:

* IRBlock: ``bn0`` (an affine applied *before* conv1's zero padding) folds into conv1 in two
  parts: its scale into the weights, its shift into a bias per border class that counts only the
  taps reading a real pixel (:func:`fused.folding.fold_input_affine`; a plain bias would be wrong
  at the border). conv1 then loads its input as is, like every other conv; conv1 + bn1 + PReLU is one kernel; conv2 + bn2 + residual + PReLU is the second. With
  squeeze-excite, conv2 + bn2 writes ``y``, the gate is computed from ``y``, and the scale is
  fused into the consumer: the downsample conv's epilogue (``prelu(ds(x) + y * gate)``) or, with
  an identity residual, one elementwise kernel (``prelu(y * gate + x)``).
* BasicBlock: conv1 + bn1 + ReLU, then conv2 + bn2 + residual + ReLU.
* Bottleneck: conv1 + bn1 + ReLU, conv2 + bn2 + ReLU, conv3 + bn3 + residual + ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

import reference
from reference.checks import check_feature_map

from .base import FusedModule, conv_weights, kernel_weight, prelu_slopes
from .folding import batchnorm_affine, fold_batchnorm, fold_input_affine
from .squeeze_excite import se_gate
from .kernels.conv2d import conv2d_bias_act
from .kernels.squeeze_excite import se_scale_residual_act


def _downsample_reason(block: nn.Module) -> str | None:
    ds = block.downsample
    if ds is not None and reference.block_type(ds) not in ("conv_bn_pair", "conv_bn_no_relu"):
        return f"downsample is a {type(ds).__name__}, not a conv + BatchNorm pair"
    return None


def _conv(x, weights, conv: nn.Conv2d, precision: str, **epilogue) -> torch.Tensor:
    """Run ``conv`` (BN folded into ``weights``) with the given epilogue."""

    weight, bias = weights
    return conv2d_bias_act(x, weight, bias, stride=conv.stride[0], padding=conv.padding[0], precision=precision, **epilogue)


class _FusedResidual(FusedModule):
    """What the three residual blocks share: folding their conv-BN pairs and the downsample."""

    fuses_children = False
    conv_bn_pairs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def unsupported_reason(cls, block) -> str | None:
        return _downsample_reason(block)

    def fold(self, dtype, device):
        folded = {conv: conv_weights(getattr(self, conv), getattr(self, bn), dtype, device) for conv, bn in self.conv_bn_pairs}
        if self.downsample is not None:
            folded["downsample"] = conv_weights(self.downsample[0], self.downsample[1], dtype, device)
        return folded

    def residual(self, x, folded, precision):
        """The shortcut: ``x`` itself, or the downsample conv + BN in one kernel."""
        if self.downsample is None:
            return x
        return _conv(x, folded["downsample"], self.downsample[0], precision)


class FusedIRBlock(_FusedResidual, reference.IRBlock, block_types=("IRBlock",)):
    """``reference.IRBlock`` in two or three conv kernels (plus the SE kernels when ``use_se``)."""

    conv_bn_pairs = (("conv2", "bn2"),)  # conv1 folds bn0 as well: see fold()

    def fold(self, dtype, device):
        folded = super().fold(dtype, device)
        weight, bias = fold_batchnorm(self.conv1.weight, self.conv1.bias, self.bn1)
        weight, border_bias = fold_input_affine(weight, *batchnorm_affine(self.bn0), self.conv1.padding[0])
        folded["conv1"] = (kernel_weight(weight, dtype).to(device), bias.to(device))
        folded["border_bias1"] = border_bias.to(device)
        folded["prelu1"] = prelu_slopes(self.prelu, self.conv1.out_channels, device)  # one slope, two widths
        folded["prelu2"] = prelu_slopes(self.prelu, self.conv2.out_channels, device)
        return folded

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.conv1.in_channels, f"IRBlock ({self.facefuse_path or 'fused'})")
        f = self.folded(x.dtype, x.device)
        p = self.dot_precision(x)
        prelu = dict(activation="prelu", slope=f["prelu2"])
        out = _conv(x, f["conv1"], self.conv1, p, border_bias=f["border_bias1"], activation="prelu", slope=f["prelu1"])
        if not self.use_se:
            return _conv(out, f["conv2"], self.conv2, p, residual=self.residual(x, f, p), **prelu)
        y = _conv(out, f["conv2"], self.conv2, p)
        gate = se_gate(self.se, y)
        if self.downsample is not None:
            return _conv(x, f["downsample"], self.downsample[0], p, residual=y, residual_scale=gate, **prelu)

        return se_scale_residual_act(y, gate, x, **prelu)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference.IRBlock.forward(self, x)


class FusedBasicBlock(_FusedResidual, reference.BasicBlock, block_types=("BasicBlock",)):
    """``reference.BasicBlock`` in two conv kernels (three with a downsample)."""

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.conv1.in_channels, f"BasicBlock ({self.facefuse_path or 'fused'})")
        f = self.folded(x.dtype, x.device)
        p = self.dot_precision(x)
        out = _conv(x, f["conv1"], self.conv1, p, activation="relu")
        return _conv(out, f["conv2"], self.conv2, p, residual=self.residual(x, f, p), activation="relu")

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference.BasicBlock.forward(self, x)


class FusedBottleneck(_FusedResidual, reference.Bottleneck, block_types=("Bottleneck",)):
    """``reference.Bottleneck`` in three conv kernels (four with a downsample)."""

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.conv1.in_channels, f"Bottleneck ({self.facefuse_path or 'fused'})")
        f = self.folded(x.dtype, x.device)
        p = self.dot_precision(x)
        out = _conv(x, f["conv1"], self.conv1, p, activation="relu")
        out = _conv(out, f["conv2"], self.conv2, p, activation="relu")
        return _conv(out, f["conv3"], self.conv3, p, residual=self.residual(x, f, p), activation="relu")

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference.Bottleneck.forward(self, x)
