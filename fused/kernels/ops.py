"""The kernels as PyTorch custom operators, ``torch.ops.facefuse.<launcher>``, so fused models
compose with ``torch.compile`` (``fullgraph=True``) and ``torch.export``.

One operator per public launcher, named after it, plus an ``_out`` twin for the launchers that
take ``out=`` (it writes into the given tensor, a channel slice of a larger buffer included,
declares that it mutates ``out`` and returns nothing)::

    conv2d_bias_act, conv2d_bias_act_out, depthwise_conv_bias_act, depthwise_conv_bias_act_out,
    conv_dw_fused, conv_dw_fused_out, lateral_upsample_add, anchor_heads (writes into its
    outputs), se_squeeze, se_excite, se_squeeze_excite, se_scale_residual_act, se_scale_residual_act_out

How a call flows. The public launchers (``fused.kernels.conv2d.conv2d_bias_act``, ...) stay what
the lessons call: they check their arguments in Python (same errors as ever) and, in eager
mode, launch. While ``torch.compile`` or ``torch.export`` traces them
(:func:`fused.runtime.tracing`), they record a call of their operator instead; the operator's
body calls the launcher again, which then launches. So eager mode never goes through the
dispatcher, and a compiled or exported graph runs exactly the eager launch (same kernels, same
``fused.recording()`` entries, same interpreter lock and bfloat16 handling).

Which kind of operator:

* kernels compiled for CUDA (and a torch with ``torch.library.triton_op``): ``triton_op``. Its
  body launches through ``torch.library.wrap_triton`` (:func:`fused.runtime.launch`), so
  Inductor sees the Triton kernels, schedules them with the rest of the graph and can capture
  them in CUDA graphs (``mode="reduce-overhead"``); its fake implementation is the body itself,
  traced with fake tensors. ``torch.export`` keeps the operators as such.
* Triton's interpreter (CPU): ``torch.library.custom_op``, opaque to the compiler, whose body
  runs the kernel in the interpreter, with a fake implementation below giving the output's
  shape, dtype and strides (the launcher's: the input's memory format).

None of the operators has an autograd formula: the fused modules take the reference path when
autograd records (see :mod:`fused.base`), and an operator called on tensors that need a
gradient raises when backward reaches it.
"""

import functools
from typing import Optional

import torch
from torch import Tensor

from .. import runtime
from . import conv2d, depthwise, fpn, heads, squeeze_excite
from .common import new_output

NAMESPACE = "facefuse"

#: "triton_op" (CUDA: Inductor sees the kernels) or "custom_op" (the interpreter, or a torch
#: without ``torch.library.triton_op``/``wrap_triton``).
KIND = ("triton_op" if not runtime.INTERPRETED and hasattr(torch.library, "triton_op")
        and hasattr(torch.library, "wrap_triton") else "custom_op")

#: Every operator defined here, by name (``torch.ops.facefuse.<name>``).
OPS: dict = {}


def define(fn, mutates_args=(), fake=None, *, namespace: str = NAMESPACE, name: str | None = None):
    """Register ``fn`` (typed, so torch infers the schema) as the operator
    ``torch.ops.<namespace>.<name>`` (``name`` defaults to ``fn``'s, the launcher's) and return it.

    ``fn`` calls the public launcher with the operator's arguments (its body, run under
    :class:`fused.runtime.op_body`, launches). ``fake`` returns an empty output of the shape,
    dtype and strides the launcher would return (for ``custom_op``; a ``triton_op`` traces its
    body instead); an operator that writes into arguments names them in ``mutates_args`` and
    returns None. Operators of the package's namespace are listed in :data:`OPS`; another
    namespace (a block defined outside the package, a test's) keeps them out of it.
    """
    name = name or fn.__name__
    qualified = f"{namespace}::{name}"

    @functools.wraps(fn)
    def body(*args, **kwargs):
        with runtime.op_body():
            return fn(*args, **kwargs)

    if KIND == "triton_op":
        op = torch.library.triton_op(qualified, body, mutates_args=mutates_args)
    else:
        op = torch.library.custom_op(qualified, body, mutates_args=mutates_args)
        op.register_fake(fake if fake is not None else _returns_none)
    if namespace == NAMESPACE:
        OPS[name] = op
    return op


def _returns_none(*args, **kwargs) -> None:
    return None


def _slope(slope: float, prelu: Optional[Tensor]):
    return prelu if prelu is not None else slope


def _conv_shape(x: Tensor, weight: Tensor, stride: int, padding: int) -> tuple:
    N, _, H, W = x.shape
    K, _, R, _ = weight.shape
    return N, K, (H + 2 * padding - R) // stride + 1, (W + 2 * padding - R) // stride + 1


def _dw_shape(x: Tensor, stride: int, channels=None) -> tuple:
    N, C, H, W = x.shape
    return N, C if channels is None else channels, (H - 1) // stride + 1, (W - 1) // stride + 1


# -- conv2d_bias_act ------------------------------------------------------------------------------

def conv2d_bias_act(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, padding: int,
                    activation: str, slope: float, prelu: Optional[Tensor], residual: Optional[Tensor],
                    residual_scale: Optional[Tensor], border_bias: Optional[Tensor], precision: str, relu_from: Optional[int]) -> Tensor:
    return conv2d.conv2d_bias_act(
        x, weight, bias, stride=stride, padding=padding, activation=activation, slope=_slope(slope, prelu),
        residual=residual, residual_scale=residual_scale, border_bias=border_bias,
        precision=precision, relu_from=relu_from)


def conv2d_bias_act_out(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, padding: int,
                        activation: str, slope: float, prelu: Optional[Tensor], residual: Optional[Tensor],
                        residual_scale: Optional[Tensor], border_bias: Optional[Tensor], precision: str, relu_from: Optional[int], out: Tensor) -> None:
    conv2d.conv2d_bias_act(
        x, weight, bias, stride=stride, padding=padding, activation=activation, slope=_slope(slope, prelu),
        residual=residual, residual_scale=residual_scale, border_bias=border_bias,
        precision=precision, relu_from=relu_from, out=out)


def _conv2d_fake(x, weight, bias, stride, padding, *rest):
    return new_output(x, _conv_shape(x, weight, stride, padding))


# -- depthwise ------------------------------------------------------------------------------------

def depthwise_conv_bias_act(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, activation: str,
                            slope: float, prelu: Optional[Tensor]) -> Tensor:
    return depthwise.depthwise_conv_bias_act(x, weight, bias, stride=stride, activation=activation,
                                             slope=_slope(slope, prelu))


def depthwise_conv_bias_act_out(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, activation: str,
                                slope: float, prelu: Optional[Tensor], out: Tensor) -> None:
    depthwise.depthwise_conv_bias_act(x, weight, bias, stride=stride, activation=activation,
                                      slope=_slope(slope, prelu), out=out)


def _depthwise_fake(x, weight, bias, stride, *rest):
    return new_output(x, _dw_shape(x, stride))


def conv_dw_fused(x: Tensor, dw_weight: Tensor, dw_bias: Tensor, pw_weight: Tensor, pw_bias: Tensor, stride: int,
                  dw_slope: float, pw_slope: float, precision: str, dw_activation: str, pw_activation: str) -> Tensor:
    return depthwise.conv_dw_fused(x, dw_weight, dw_bias, pw_weight, pw_bias, stride=stride, dw_slope=dw_slope,
                                   pw_slope=pw_slope, precision=precision, dw_activation=dw_activation,
                                   pw_activation=pw_activation)


def conv_dw_fused_out(x: Tensor, dw_weight: Tensor, dw_bias: Tensor, pw_weight: Tensor, pw_bias: Tensor, stride: int,
                      dw_slope: float, pw_slope: float, precision: str, dw_activation: str, pw_activation: str,
                      out: Tensor) -> None:
    depthwise.conv_dw_fused(x, dw_weight, dw_bias, pw_weight, pw_bias, stride=stride, dw_slope=dw_slope,
                            pw_slope=pw_slope, precision=precision, dw_activation=dw_activation,
                            pw_activation=pw_activation, out=out)


def _conv_dw_fake(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, *rest):
    return new_output(x, _dw_shape(x, stride, pw_weight.shape[0]))


# -- FPN and heads --------------------------------------------------------------------------------

def lateral_upsample_add(x: Tensor, weight: Tensor, bias: Tensor, coarse: Optional[Tensor], activation: str,
                         slope: float, prelu: Optional[Tensor], precision: str) -> Tensor:
    return fpn.lateral_upsample_add(x, weight, bias, coarse, activation=activation, slope=_slope(slope, prelu),
                                    precision=precision)


def _lateral_fake(x, weight, bias, *rest):
    N, _, H, W = x.shape
    return new_output(x, (N, weight.shape[0], H, W))


def anchor_heads(x: Tensor, weight: Tensor, bias: Tensor, out0: Tensor, out1: Optional[Tensor],
                 out2: Optional[Tensor], anchors: int, row_offset: int, softmax: bool, precision: str) -> None:
    outputs = tuple(t for t in (out0, out1, out2) if t is not None)
    heads.anchor_heads(x, weight, bias, outputs, anchors=anchors, row_offset=row_offset, softmax=softmax,
                       precision=precision)


# -- squeeze-excite -------------------------------------------------------------------------------

def se_squeeze(x: Tensor) -> Tensor:
    return squeeze_excite.se_squeeze(x)


def _squeeze_fake(x):
    return x.new_empty(x.shape[:2], dtype=torch.float32)


def se_excite(pooled: Tensor, fc1_weight: Tensor, fc1_bias: Tensor, prelu_weight: Tensor, fc2_weight: Tensor,
              fc2_bias: Tensor) -> Tensor:
    return squeeze_excite.se_excite(pooled, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias)


def _excite_fake(pooled, *rest):
    return pooled.new_empty(pooled.shape, dtype=torch.float32)


def se_squeeze_excite(x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor, prelu_weight: Tensor, fc2_weight: Tensor,
                      fc2_bias: Tensor) -> Tensor:
    return squeeze_excite.se_squeeze_excite(x, fc1_weight, fc1_bias, prelu_weight, fc2_weight, fc2_bias)


def _squeeze_excite_fake(x, *rest):
    return x.new_empty(x.shape[:2], dtype=torch.float32)


def se_scale_residual_act(y: Tensor, scale: Tensor, residual: Optional[Tensor], activation: str, slope: float,
                          prelu: Optional[Tensor]) -> Tensor:
    return squeeze_excite.se_scale_residual_act(y, scale, residual, activation=activation, slope=_slope(slope, prelu))


def se_scale_residual_act_out(y: Tensor, scale: Tensor, residual: Optional[Tensor], activation: str, slope: float,
                              prelu: Optional[Tensor], out: Tensor) -> None:
    squeeze_excite.se_scale_residual_act(y, scale, residual, activation=activation, slope=_slope(slope, prelu),
                                         out=out)


def _scale_fake(y, *rest):
    return new_output(y, y.shape)


define(conv2d_bias_act, fake=_conv2d_fake)
define(conv2d_bias_act_out, mutates_args=("out",))
define(depthwise_conv_bias_act, fake=_depthwise_fake)
define(depthwise_conv_bias_act_out, mutates_args=("out",))
define(conv_dw_fused, fake=_conv_dw_fake)
define(conv_dw_fused_out, mutates_args=("out",))
define(lateral_upsample_add, fake=_lateral_fake)
define(anchor_heads, mutates_args=("out0", "out1", "out2"))
define(se_squeeze, fake=_squeeze_fake)
define(se_excite, fake=_excite_fake)
define(se_squeeze_excite, fake=_squeeze_excite_fake)
define(se_scale_residual_act, fake=_scale_fake)
define(se_scale_residual_act_out, mutates_args=("out",))
