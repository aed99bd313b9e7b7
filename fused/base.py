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
* the input dtype is not float32/float16/bfloat16 (float64, say), or the ``torch.autocast``
  dtype is not one of those;
* a BatchNorm the block folds has ``running_var + eps == 0`` in some channel (its scale is
  infinite: :func:`fused.folding.unfoldable_reason`). :func:`fused.fuse` leaves such blocks
  unfused, with the reason in the fuse report; this fallback catches statistics loaded after
  ``fuse()`` (in eager mode: under ``torch.compile`` the values cannot be read while tracing).

Under ``torch.autocast`` the fused path follows autocast: the kernels run in the autocast dtype,
their inputs cast to it (float64 excepted) as autocast casts a convolution's, so each fused block
returns the dtype its reference returns under the same autocast, and the record notes it
(:meth:`fused.record.Recording.autocasts`). The folds are computed with autocast off.

Bad input raises before any of that, on both paths alike (flag on or off, grad or not): a
non-floating input, or one whose dtype differs from the block's conv/linear weights (float16
into a float32 model, float64 into a float32 model), gets a TypeError that names the fix.

Folded weights are cached per (dtype, device). The cache key holds, for every module the fold
reads, each parameter's and buffer's storage address, version counter and dtype, and the
module's non-tensor settings (``bn.eps``, a LeakyReLU's ``negative_slope``, conv strides: the
layer's ``__constants__``); the cache keeps the storages it folded alive, so no new tensor can
take one of their addresses while it stands. ``.to()``/``.half()``/``load_state_dict`` drop the
cache outright. So every change made through the tensors or modules themselves is seen: in-place
ops on a parameter or buffer (under ``no_grad``, through ``detach()`` or a view), ``copy_``,
optimizer steps, loading weights, moving the model, replacing a parameter (``p.data = t``
included), changing a setting.

Not seen: writes that bypass the parameter's own version counter: in-place ops on ``p.data``
(``p.data.mul_(2)``: ``.data`` is a new tensor with its own counter) or on a tensor ``t`` after
``p.data = t``, and writes through a NumPy view. After such a change call :func:`refresh` (drops
every fold cache of a model); :func:`verify_folds` (or ``FACEFUSE_VERIFY_FOLDS=1``) refolds on
every call and raises if a cached fold is stale.

A model built under ``torch.inference_mode()`` has parameters without version counters; its
weights are folded on every call instead (correct, a little slower): build models outside
inference mode. The cache is not pickled (``torch.save(model)`` stores the weights once).

Under ``torch.compile`` and ``torch.export`` (:func:`fused.runtime.tracing`) the cache is not
used: the fold is traced into the graph and recomputed from the parameters the graph receives on
every call, so it cannot be stale. The fallback reasons are read at trace time from state Dynamo
guards on (training mode, grad mode, ``requires_grad``, dtypes), and the choice is not recorded
(``fused.record`` context variables are out of Dynamo's reach): the kernels' operators record
their launches when they run.
"""

from __future__ import annotations

import itertools
import os
import warnings

import torch
from torch import nn

from . import flag, folding, record, registry, runtime

_CACHE = "_facefuse_cache"  # the instance attribute holding (key, folded weights, storages kept alive)
_verify = os.environ.get("FACEFUSE_VERIFY_FOLDS", "0").strip().lower() not in {"", "0", "false", "no", "off"}


class verify_folds:
    """Check every cached fold against a fresh one on every call (a debug switch; slow).

    ``fused.verify_folds(True)`` turns it on for the process, ``with fused.verify_folds():``
    for a block of code (the previous setting comes back at exit); ``FACEFUSE_VERIFY_FOLDS=1``
    turns it on at import. A stale fold raises RuntimeError naming the block.
    """

    def __init__(self, on: bool = True):
        global _verify
        self._previous = _verify
        _verify = bool(on)

    def __enter__(self) -> "verify_folds":
        return self

    def __exit__(self, *exc) -> None:
        global _verify
        _verify = self._previous


def verifying_folds() -> bool:
    """True when :class:`verify_folds` is on."""
    return _verify


def refresh(model: nn.Module) -> nn.Module:
    """Drop the folded-weight cache of every fused module in ``model`` (returned as is).

    Call it after changing weights in a way the cache cannot see, such as ``p.data.mul_(2)``;
    the next call folds again.
    """
    for module in model.modules():
        module.__dict__.pop(_CACHE, None)
    return model


_CONSTANTS: dict[type, tuple[str, ...]] = {}


def _constants(cls: type) -> tuple[str, ...]:
    """The non-tensor settings a torch layer class declares (``__constants__``: ``eps``, strides...)."""
    names = _CONSTANTS.get(cls)
    if names is None:
        names = _CONSTANTS[cls] = tuple(getattr(cls, "__constants__", ()))
    return names


def _settings(module: nn.Module) -> tuple:
    """A layer's settings that a fold may read (``bn.eps``, a LeakyReLU's ``negative_slope``...)."""
    attributes = module.__dict__
    return tuple([attributes.get(name) for name in _constants(type(module))])


def _subtree(module: nn.Module) -> list[nn.Module]:
    """``module`` and every module below it (a plain walk: this runs on every call)."""
    out, stack = [], [module]
    while stack:
        m = stack.pop()
        out.append(m)
        stack.extend(child for child in m._modules.values() if child is not None)
    return out


def _flat_tensors(args) -> list[torch.Tensor]:
    """The tensors among ``args``, one level of lists and tuples opened (the FPN takes a list)."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(t for t in a if isinstance(t, torch.Tensor))
    return out


def _same(a, b) -> bool:
    """Folds ``a`` and ``b`` are identical: same structure, tensors bit for bit (NaN where NaN)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return (a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
                and bool(((a == b) | (a.isnan() & b.isnan())).all()))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    return type(a) is type(b) and a == b


#: The values of ``fuse(model, precision=...)`` and :attr:`FusedModule.precision`.
PRECISIONS = ("auto", "ieee", "tf32")


def float32_precision(device) -> str:
    """The dot precision PyTorch's own float32 convolutions use on ``device``, read now.

    ``"tf32"`` on a CUDA GPU with TF32 tensor cores (compute capability 8.0 or newer) while
    ``torch.backends.cudnn.allow_tf32`` is True (PyTorch's default for convolutions), else
    ``"ieee"``. Triton's interpreter (CPU tensors) has no TF32: always ``"ieee"`` there.
    """
    device = torch.device(device)
    if device.type != "cuda" or runtime.INTERPRETED or not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32" if torch.cuda.get_device_capability(device)[0] >= 8 else "ieee"


class FusedModule(nn.Module):
    """Mixin for fused modules. Subclasses define ``fused_forward``, ``reference_forward`` and ``fold``.

    A subclass names the block types it replaces in its class statement, which registers it for
    :func:`fused.fuse` (see :mod:`fused.registry`); the first is its :attr:`block_type`::

        class FusedSSH(FusedModule, reference.SSH, block_types=("SSH",)): ...
    """

    #: The seed's name for the block this module replaces (``"conv_bn"``, ``"conv_dw"``, ...).
    block_type: str = ""
    #: Every block type the class declared in its class statement (registered for :func:`fused.fuse`).
    block_types: tuple[str, ...] = ()
    #: The block's path in the model, set by :func:`fused.fuse` (for the record).
    facefuse_path: str | None = None
    #: True for fused classes whose children are blocks that :func:`fused.fuse` fuses too.
    fuses_children: bool = False
    #: Children this fused module runs itself (not reported as left in PyTorch).
    handled_children: tuple[str, ...] = ()
    _warned_autograd = False

    def __init_subclass__(cls, block_types=None, **kwargs):
        super().__init_subclass__(**kwargs)
        if block_types is not None:
            names = registry.block_type_names(block_types)
            cls.block_type = names[0]
            cls.block_types = names
            for name in names:
                registry.register(name, cls)

    @classmethod
    def unsupported_reason(cls, block: nn.Module) -> str | None:
        """Why ``block`` cannot be fused (a reason for the report), or None."""
        return None

    @classmethod
    def inner_children(cls, block: nn.Module) -> tuple[str, ...]:
        """Names of ``block``'s children whose work the fused path does itself.

        The fused path folds their weights and never calls them, so their forward hooks do not
        fire there. By default every child; a class whose other children run as they are
        (``fuses_children``) has only its ``handled_children``.
        """
        if cls.fuses_children:
            return cls.handled_children
        return tuple(name for name, child in block._modules.items() if child is not None)

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
        """``"auto"`` (the default: float32 dots as PyTorch's own convolutions do them, see
        :func:`float32_precision`), ``"ieee"`` (exact float32 products) or ``"tf32"`` (TF32
        tensor cores); the last two apply to float32 inputs only."""
        return self.__dict__.get("_precision", "auto")

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {value!r}")
        self.__dict__["_precision"] = value

    def dot_precision(self, x: torch.Tensor) -> str:
        """The precision to pass to the kernels for input ``x``: ``"ieee"`` for half inputs,
        :attr:`precision` for float32, with ``"auto"`` resolved now by :func:`float32_precision`."""
        if x.dtype != torch.float32:
            return "ieee"
        return float32_precision(x.device) if self.precision == "auto" else self.precision

    def forward(self, *args):
        self.check_input_dtypes(*args)
        reason = self.fallback_reason(*args)
        if runtime.tracing():  # torch.compile / torch.export: the record follows the ops at run time
            return self.fused_forward(*self.autocast_inputs(args)) if reason is None else self.reference_forward(*args)
        if reason is None:
            try:
                with record.in_block(self.facefuse_path):
                    dtype = autocast_dtype(args)
                    if dtype is not None:
                        record.autocast(type(self).__name__, dtype if self.autocast_casts_inputs else None,
                                        self.facefuse_path)
                    return self.fused_forward(*self.autocast_inputs(args))
            except folding.UnfoldableBatchNorm as exc:  # statistics changed after fuse() checked them
                reason = f"a BatchNorm cannot be folded: {exc}"
        record.fell_back(type(self).__name__, reason, self.facefuse_path)
        return self.reference_forward(*args)

    #: Under ``torch.autocast``, cast the inputs to the autocast dtype before the kernels, as
    #: autocast casts a convolution's. False for a block whose reference keeps its input's dtype
    #: under autocast (SEBlock: ``x * gate`` promotes back to ``x``'s dtype).
    autocast_casts_inputs: bool = True

    def autocast_inputs(self, args: tuple) -> tuple:
        """``args`` as the kernels take them: under ``torch.autocast`` (on the inputs' device type),
        every floating tensor but float64 cast to the autocast dtype, as autocast casts the inputs
        of a convolution (one level of lists opened, for the FPN); otherwise ``args`` unchanged."""
        dtype = autocast_dtype(args) if self.autocast_casts_inputs else None
        if dtype is None:
            return args

        def cast(a):
            if isinstance(a, torch.Tensor):
                return a.to(dtype) if a.is_floating_point() and a.dtype != torch.float64 else a
            if isinstance(a, (list, tuple)):
                return type(a)(cast(t) for t in a)
            return a

        return tuple(cast(a) for a in args)

    def inner_modules(self) -> list[nn.Module]:
        """The modules inside this block that the fused path runs itself (see :meth:`inner_children`)."""
        children = (self._modules.get(name) for name in type(self).inner_children(self))
        return [m for child in children if child is not None for m in _subtree(child)]

    def check_input_dtypes(self, *args) -> None:
        """Raise TypeError for an input the reference forward cannot take either, whichever path runs.

        A non-floating input, or one whose dtype differs from the block's conv/linear weights:
        PyTorch's layers raise (deep inside) for those, while the kernels, folding to the input's
        dtype, would run. Under autocast the reference casts, so a dtype difference is allowed.
        """
        tensors = _flat_tensors(args)
        if not tensors:
            return
        if not all(t.is_floating_point() for t in tensors):
            dtype = next(t.dtype for t in tensors if not t.is_floating_point())
            raise TypeError(f"{self._name()} expects a floating-point tensor, got dtype {dtype}: convert the "
                            f"input, e.g. x.float()")
        weight = self._layer_weight()
        if weight is None or all(t.dtype == weight.dtype for t in tensors):
            return
        x = next(t for t in tensors if t.dtype != weight.dtype)
        if torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type):
            return
        short = str(weight.dtype).removeprefix("torch.")
        if x.dtype == torch.float64:
            raise TypeError(
                f"{self._name()}: the input is float64 but the model's weights are {short}. To run in float64, "
                f"convert the model too (model.double()): float64 runs the reference forward, since the "
                f"kernels take float32, float16 and bfloat16. Otherwise convert the input: x.to(torch.{short})")
        raise TypeError(
            f"{self._name()}: the input is {str(x.dtype).removeprefix('torch.')} but the model's weights are "
            f"{short}; make them match: convert the input (x.to(torch.{short})) or the model "
            f"(model.to({x.dtype}))")

    def _name(self) -> str:
        return f"{type(self).__name__} ({self.facefuse_path})" if self.facefuse_path else type(self).__name__

    def _layer_weight(self) -> torch.Tensor | None:
        """The weight of the first conv or linear layer among the inner modules (None if none)."""
        for name in type(self).inner_children(self):
            stack = [self._modules.get(name)]
            while stack:
                m = stack.pop()
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    return m.weight
                if m is not None:
                    stack.extend(m._modules.values())
        return None

    def fallback_reason(self, *args) -> str | None:
        """Why this call must run the reference forward, or None to take the fused path."""
        if not flag.is_enabled():
            return "fused path disabled by the flag"
        if not flag.is_enabled(self.block_type):
            return f"fused path disabled by the flag for {self.block_type} blocks"
        if self.training:
            return "training mode: BatchNorm statistics must update"
        tensors = _flat_tensors(args)
        if torch.is_grad_enabled() and any(t.requires_grad for t in itertools.chain(tensors, self.parameters())):
            if not FusedModule._warned_autograd and not torch.compiler.is_dynamo_compiling():
                FusedModule._warned_autograd = True
                warnings.warn(
                    "facefuse: autograd is recording, so fused modules run the reference forward "
                    "(the Triton kernels have no backward); run inference under "
                    "torch.inference_mode() or torch.no_grad() to use the kernels",
                    stacklevel=3,
                )
            return "autograd is recording: the kernels have no backward"
        for t in tensors:
            if t.dtype not in runtime.SUPPORTED_DTYPES:
                return f"dtype {t.dtype} is not supported by the kernels (float32, float16, bfloat16)"
        dtype = autocast_dtype(args)
        if dtype is not None and dtype not in runtime.SUPPORTED_DTYPES:
            return f"autocast dtype {dtype} is not supported by the kernels (float32, float16, bfloat16)"
        return None

    def fold_modules(self) -> list[nn.Module]:
        """The modules :meth:`fold` may read: this one and :meth:`inner_modules` (all of them for a
        block whose children are all inner; more is safe, just refolds more often)."""
        if not self.fuses_children:
            return _subtree(self)
        return [self, *self.inner_modules()]

    def _fold_key(self, dtype: torch.dtype, device: torch.device):
        """``(key, tensors)`` for :meth:`folded`; key None when a tensor has no version counter."""
        settings, tensors = [], []
        for m in self.fold_modules():
            if _constants(type(m)):
                settings.append(_settings(m))
            tensors += m._parameters.values()
            tensors += m._buffers.values()
        tensors = [t for t in tensors if t is not None]
        try:
            state = [(t.data_ptr(), t._version, t.dtype) for t in tensors]
        except RuntimeError:
            if any(t.is_inference() for t in tensors):
                return None, tensors
            raise
        return (dtype, device, settings, state), tensors

    def _fold_now(self, dtype: torch.dtype, device: torch.device) -> dict:
        """:meth:`fold` without grad and with autocast off on ``device``: a fold computes in the
        dtypes it names, whatever the caller's autocast (it is cached and reused outside it)."""
        device_type = torch.device(device).type
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            with torch.no_grad(), torch.autocast(device_type, enabled=False):
                return self.fold(dtype, device)
        with torch.no_grad():
            return self.fold(dtype, device)

    def folded(self, dtype: torch.dtype, device: torch.device) -> dict:
        """Cached :meth:`fold` result, recomputed whenever what the fold reads has changed.

        The key: per module of :meth:`fold_modules`, its settings and each parameter's and
        buffer's address, version counter and dtype. The cache holds the storages it folded, so
        their addresses cannot be reused by new tensors while it stands.
        """
        if runtime.tracing():
            # torch.compile / torch.export: the fold is part of the graph, computed from the
            # parameters the graph gets (no cache, so never stale).
            return self._fold_now(dtype, device)
        key, tensors = self._fold_key(dtype, device)
        if key is None:
            # Tensors made under torch.inference_mode() have no version counter, so an in-place
            # change could not be seen: fold on every call rather than risk stale weights.
            return self._fold_now(dtype, device)
        cached = self.__dict__.get(_CACHE)
        if cached is not None and cached[0] == key and not _verify:
            return cached[1]
        value = self._fold_now(dtype, device)
        if cached is not None and cached[0] == key and not _same(cached[1], value):
            raise RuntimeError(
                f"facefuse: the folded weights cached by {type(self).__name__} "
                f"({self.facefuse_path or 'fused'}) are stale: a parameter or buffer changed without "
                f"bumping its version counter (p.data.mul_(), a NumPy view...). Call "
                f"fused.refresh(model) after such changes")
        self.__dict__[_CACHE] = (key, value, [t.untyped_storage() for t in tensors])
        return value

    # -- keeping the cache out of the way ----------------------------------------------------
    def _apply(self, fn, *args, **kwargs):
        # .to(), .half(), .cuda(): new storages; drop the folds rather than trust addresses.
        self.__dict__.pop(_CACHE, None)
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__.pop(_CACHE, None)  # load_state_dict, assign=True included
        return super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        # Pickling (torch.save(model), copy.deepcopy) leaves the folds out: they are derived data,
        # as large as the weights, and are rebuilt on the first call after loading.
        state = self.__dict__.copy()
        state.pop(_CACHE, None)
        return state


def autocast_dtype(args) -> torch.dtype | None:
    """The dtype ``torch.autocast`` runs convolutions in for these inputs (the autocast dtype of
    their device type), or None when autocast is off there or no input is a tensor."""
    tensors = _flat_tensors(args)
    if not tensors:
        return None
    device_type = tensors[0].device.type
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def conv_weights(conv: nn.Conv2d, bn: nn.BatchNorm2d, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv`` followed by ``bn`` folded, as kernel-ready ``(weight, float32 bias)`` on ``device``."""
    weight, bias = folding.fold_batchnorm(conv.weight, conv.bias, bn)
    return kernel_weight(weight, dtype).to(device), bias.to(device)


def prelu_slopes(prelu: nn.PReLU, channels: int, device) -> torch.Tensor:
    """A PReLU's slope(s) as the contiguous fp32 vector of ``channels`` the kernels read (no per-call copy)."""
    slopes = prelu.weight.detach().float().reshape(-1)
    return slopes.expand(channels).contiguous().to(device) if slopes.numel() == 1 else slopes.contiguous().to(device)


def channels_last_output(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor | None:
    """An empty channels_last (NHWC) output for ``conv`` applied to ``x``, for the ``out=`` of a
    model's first kernel: it reads the user's layout and writes NHWC, so the activations are
    channels_last from there on with no conversion copy. None when ``conv`` does not fit ``x``
    (the launcher then raises its own error)."""
    if x.dim() != 4:
        return None
    (r, s), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    oh, ow = (x.shape[2] + 2 * ph - r) // sh + 1, (x.shape[3] + 2 * pw - s) // sw + 1
    if oh < 1 or ow < 1:
        return None
    return torch.empty((x.shape[0], conv.out_channels, oh, ow), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


def kernel_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A conv weight ``[K, C, R, S]`` cast to ``dtype`` and laid out with K innermost.

    The kernels read weights by strides; with output channels contiguous, the weight tile a
    program loads for a block of output channels is one coalesced read. Done once per fold.
    """
    return weight.to(dtype).permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
