"""What every fused module shares: when to take the fused path, fallbacks, and the weight cache.

A fused module holds the very parameters and buffers of the reference block it replaces (same
children, same names, so the same ``state_dict``) and keeps both forwards:

* ``fused_forward`` launches Triton kernels with folded weights;
* ``reference_forward`` is the reference block's own forward.

``forward`` takes the fused path unless one of these holds, in which case it runs the reference
forward and records why (see :mod:`fused.record`):

* the flag is off (``fused.enabled(False)`` or ``FACEFUSE_FUSED=0``), or off for this block
  type (``fused.enabled(False, block_types={"SSH"})``);
* the module is in training mode: BatchNorm statistics must update;
* autograd is recording (a parameter or an input requires grad): the kernels have no backward,
  so gradients stay exact; run inference under ``torch.inference_mode()`` to get the kernels;
* the input dtype is not float32/float16/bfloat16 (float64, say).

Folded weights are cached per (dtype, device) and recomputed whenever any parameter or buffer
changes: in-place updates bump a tensor's version counter, and ``.to()``/``load_state_dict``
replace or rewrite the storage, so the cache key sees every change. A model built under
``torch.inference_mode()`` has parameters without version counters; its weights are folded on
every call instead (correct, a little slower): build models outside inference mode.
"""

from __future__ import annotations

import itertools
import warnings

import torch
from torch import nn

from . import flag, folding, record, runtime


class FusedModule(nn.Module):
    """Mixin for fused modules. Subclasses define ``fused_forward``, ``reference_forward`` and ``fold``."""

    #: The seed's name for the block this module replaces (``"conv_bn"``, ``"conv_dw"``, ...).
    block_type: str = ""
    #: The block's path in the model, set by :func:`fused.fuse` (for the record).
    facefuse_path: str | None = None
    #: True for fused classes whose children are blocks that :func:`fused.fuse` fuses too.
    fuses_children: bool = False
    #: Children this fused module runs itself (not reported as left in PyTorch).
    handled_children: tuple[str, ...] = ()
    _warned_autograd = False

    @classmethod
    def unsupported_reason(cls, block: nn.Module) -> str | None:
        """Why ``block`` cannot be fused (a reason for the report), or None."""
        return None

    @classmethod
    def from_reference(cls, block: nn.Module) -> "FusedModule":
        """Turn ``block`` into this fused class in place and return it.

        Fused classes subclass the reference class they replace, so switching ``__class__``
        keeps the very object: its parameters, buffers, hooks and attribute names, hence its
        ``state_dict``. Only ``forward`` changes.
        """
        if not issubclass(cls, type(block)):
            raise TypeError(f"{cls.__name__} cannot replace a {type(block).__name__}")
        block.__class__ = cls
        return block

    # -- subclasses --------------------------------------------------------------------------
    def fused_forward(self, *args):  # pragma: no cover - abstract
        raise NotImplementedError

    def reference_forward(self, *args):  # pragma: no cover - abstract
        raise NotImplementedError

    def fold(self, dtype: torch.dtype, device: torch.device) -> dict:
        """Kernel-ready weights for inputs of ``dtype`` on ``device`` (cached by :meth:`folded`)."""
        raise NotImplementedError  # pragma: no cover

    # -- shared ------------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """``"ieee"`` (exact float32 dot products, the default) or ``"tf32"`` (float32 inputs only)."""
        return self.__dict__.get("_precision", "ieee")

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in ("ieee", "tf32"):
            raise ValueError(f"precision must be 'ieee' or 'tf32', got {value!r}")
        self.__dict__["_precision"] = value

    def dot_precision(self, x: torch.Tensor) -> str:
        """The precision to pass to the kernels for input ``x`` (TF32 applies to float32 only)."""
        return self.precision if x.dtype == torch.float32 else "ieee"

    def forward(self, *args):
        reason = self.fallback_reason(*args)
        if reason is None:
            with record.in_block(self.facefuse_path):
                return self.fused_forward(*args)
        record.fell_back(type(self).__name__, reason, self.facefuse_path)
        return self.reference_forward(*args)

    def fallback_reason(self, *args) -> str | None:
        """Why this call must run the reference forward, or None to take the fused path."""
        if not flag.is_enabled():
            return "fused path disabled by the flag"
        if not flag.is_enabled(self.block_type):
            return f"fused path disabled by the flag for {self.block_type} blocks"
        if self.training:
            return "training mode: BatchNorm statistics must update"
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if torch.is_grad_enabled() and any(t.requires_grad for t in itertools.chain(tensors, self.parameters())):
            if not FusedModule._warned_autograd:
                FusedModule._warned_autograd = True
                warnings.warn(
                    "facefuse: autograd is recording, so fused modules run the reference forward "
                    "(the Triton kernels have no backward); run inference under "
                    "torch.inference_mode() or torch.no_grad() to use the kernels",
                    stacklevel=3,
                )
            return "autograd is recording: the kernels have no backward"
        for t in tensors:
            if not t.is_floating_point():
                raise TypeError(f"{type(self).__name__} expects a floating-point tensor, got dtype {t.dtype}")
            if t.dtype not in runtime.SUPPORTED_DTYPES:
                return f"dtype {t.dtype} is not supported by the kernels (float32, float16, bfloat16)"
        return None

    def fold_sources(self):
        """The tensors :meth:`fold` reads (by default every parameter and buffer of the module)."""
        return itertools.chain(self.parameters(), self.buffers())

    def folded(self, dtype: torch.dtype, device: torch.device) -> dict:
        """Cached :meth:`fold` result, recomputed whenever one of :meth:`fold_sources` has changed."""
        sources = list(self.fold_sources())
        if any(t.is_inference() for t in sources):
            # Tensors made under torch.inference_mode() have no version counter, so an in-place
            # change could not be seen: fold on every call rather than risk stale weights.
            with torch.no_grad():
                return self.fold(dtype, device)
        key = (dtype, device, tuple((t.data_ptr(), t._version, t.dtype) for t in sources))
        cache = self.__dict__.setdefault("_facefuse_cache", {})
        if cache.get("key") != key:
            with torch.no_grad():
                cache["value"] = self.fold(dtype, device)
            cache["key"] = key
        return cache["value"]


def conv_weights(conv: nn.Conv2d, bn: nn.BatchNorm2d, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv`` followed by ``bn`` folded, as kernel-ready ``(weight, float32 bias)`` on ``device``."""
    weight, bias = folding.fold_batchnorm(conv.weight, conv.bias, bn)
    return kernel_weight(weight, dtype).to(device), bias.to(device)


def prelu_slopes(prelu: nn.PReLU, channels: int, device) -> torch.Tensor:
    """A PReLU's slope(s) as the contiguous fp32 vector of ``channels`` the kernels read (no per-call copy)."""
    slopes = prelu.weight.detach().float().reshape(-1)
    return slopes.expand(channels).contiguous().to(device) if slopes.numel() == 1 else slopes.contiguous().to(device)


def kernel_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A conv weight ``[K, C, R, S]`` cast to ``dtype`` and laid out with K innermost.

    The kernels read weights by strides; with output channels contiguous, the weight tile a
    program loads for a block of output channels is one coalesced read. Done once per fold.
    """
    return weight.to(dtype).permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
