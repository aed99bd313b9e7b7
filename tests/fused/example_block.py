"""A new block added exactly as docs/adding-a-block.md says, in one test-only module.

In the package these three sections are three files: ``reference/bn_act.py`` (the reference
block), ``fused/kernels/bn_act.py`` (the kernel, its plan and launcher, and its operator in
``fused/kernels/ops.py``) and ``fused/bn_act.py`` (the fused module). Only the operator's
namespace differs: ``facefuse_example`` instead of ``facefuse``, so that the package's operator
list (``fused.kernels.ops.OPS``) stays the package's.

Importing this module registers ``"BNAct"`` for :func:`fused.fuse`; tests import it through a
fixture that restores the registry afterwards.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor, nn

from fused import record, runtime
from fused.base import FusedModule
from fused.conv_bn_act import activation_of
from fused.folding import batchnorm_affine
from fused.kernels import ops
from fused.kernels.common import LaunchPlan, activate, check_launch, needs_int64, resolve_activation
from reference.block_types import activation_name, block_class
from reference.checks import check_feature_map

# --- 1. the reference block (reference/bn_act.py) -------------------------------------------------


@block_class
class BNAct(nn.Module):
    """BatchNorm → activation (pre-activation ResNets' ``bn → relu``): readable PyTorch."""

    def __init__(self, channels: int, act: nn.Module | None = None):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU6() if act is None else act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(x))


# --- 2. the kernel, its plan and launcher (fused/kernels/bn_act.py) --------------------------------


@triton.jit
def bn_act_kernel(x_ptr, scale_ptr, shift_ptr, out_ptr, total, C, HW, leaky_slope,
                  ACTIVATION: tl.constexpr, USE_INT64: tl.constexpr, BLOCK: tl.constexpr):
    """``out = activate(x * scale[c] + shift[c])`` on one block of a contiguous NCHW tensor."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if USE_INT64:
        offsets = offsets.to(tl.int64)
    mask = offsets < total
    c = (offsets // HW) % C
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + c, mask=mask, other=0.0)
    shift = tl.load(shift_ptr + c, mask=mask, other=0.0)
    y = activate(x * scale + shift, leaky_slope, ACTIVATION)  # the one activation table's epilogue
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


def bn_act_plan(total: int) -> LaunchPlan:
    """Grid and block size of a launch over ``total`` elements."""
    block = min(1024, triton.next_power_of_2(max(total, 1)))
    return LaunchPlan(grid=(triton.cdiv(total, block),), blocks={"BLOCK": block}, num_warps=4)


def bn_act(x: Tensor, scale: Tensor, shift: Tensor, *, activation: str = "identity", slope=0.0) -> Tensor:
    """``activation(x * scale[c] + shift[c])`` for ``x`` [N, C, H, W]; float32 ``scale``/``shift``
    [C]. Returns a contiguous tensor of x's dtype."""
    name = "bn_act"
    check_launch(name, x, scale, shift)
    if x.dim() != 4 or tuple(scale.shape) != (x.shape[1],) or tuple(shift.shape) != (x.shape[1],):
        raise ValueError(f"{name}: x must be [N, C, H, W] and scale, shift [C], got {tuple(x.shape)}, "
                         f"{tuple(scale.shape)}, {tuple(shift.shape)}")
    if activation == "prelu":
        raise ValueError(f"{name}: takes activations with one scalar slope, not 'prelu'")
    code, leaky_slope, _ = resolve_activation(activation, slope, x.shape[1], x.device)
    if runtime.tracing():  # torch.compile / torch.export: record the operator instead of launching
        return torch.ops.facefuse_example.bn_act(x, scale, shift, activation, float(leaky_slope))
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    plan = bn_act_plan(x.numel())
    record.kernel_launched(name)
    runtime.launch(bn_act_kernel, plan.grid, x, scale, shift, out, x.numel(), x.shape[1], x.shape[2] * x.shape[3],
                   leaky_slope, ACTIVATION=code, USE_INT64=needs_int64(x, out), num_warps=plan.num_warps,
                   **plan.blocks)
    return out


# ... and its operator (fused/kernels/ops.py): the body calls the launcher; the fake gives the
# output's shape, dtype and strides (the launcher's: contiguous).

def _bn_act_op(x: Tensor, scale: Tensor, shift: Tensor, activation: str, slope: float) -> Tensor:
    return bn_act(x, scale, shift, activation=activation, slope=slope)


def _bn_act_fake(x, scale, shift, activation, slope):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


BN_ACT_OP = ops.define(_bn_act_op, fake=_bn_act_fake, namespace="facefuse_example", name="bn_act")


# --- 3. the fused module (fused/bn_act.py) ---------------------------------------------------------


class FusedBNAct(FusedModule, BNAct, block_types=("BNAct",)):
    """``BNAct`` as one elementwise kernel: the BatchNorm folded to a per-channel affine."""

    @classmethod
    def unsupported_reason(cls, block: BNAct) -> str | None:
        name = activation_name(block.act)
        if name is None or name == "prelu":
            return f"{type(block.act).__name__} activation (the kernel takes those of one scalar slope)"
        return None

    def fold(self, dtype, device):
        scale, shift = batchnorm_affine(self.bn)
        return {"scale": scale.to(device), "shift": shift.to(device)}

    def fused_forward(self, x: Tensor) -> Tensor:
        check_feature_map(x, self.bn.num_features, f"BNAct ({self.facefuse_path or 'fused'})")
        f = self.folded(x.dtype, x.device)
        activation, slope = activation_of(self.act)
        return bn_act(x, f["scale"], f["shift"], activation=activation, slope=slope)

    def reference_forward(self, x: Tensor) -> Tensor:
        return BNAct.forward(self, x)
