"""Where the Triton kernels run: a CUDA GPU, or Triton's interpreter on CPU tensors.

Imported first by the ``fused`` package. On a machine without CUDA it sets ``TRITON_INTERPRET=1``
before any kernel is decorated, so the kernels run on CPU tensors with nothing for the user to
set. On a CUDA machine the kernels are compiled for the GPU and need CUDA tensors; set
``TRITON_INTERPRET=1`` yourself before importing ``fused`` to interpret them on the CPU instead.

Import order. Triton builds its own ``@triton.jit`` library (``tl.zeros``, ``tl.sum``,
``tl.cdiv``, ...) once, when ``triton`` is first imported, for the compiler or for the
interpreter depending on ``TRITON_INTERPRET`` at that moment. If ``triton`` was imported before
``fused`` (directly, or by ``torch.compile``/``torch._dynamo``), that library was built for the
compiler, and every interpreted kernel calling it would fail. So in interpreter mode this module
rebuilds those functions as interpreter functions, exactly what ``import triton`` makes with
``TRITON_INTERPRET=1`` set: any import order works. If this Triton's library cannot be rebuilt,
``import fused`` raises an ImportError that says so and how to avoid it.

:func:`launcher` wraps every public kernel launcher. In interpreter mode it

* serialises launches: Triton's interpreter keeps global state (it patches ``triton.language``
  while a kernel runs), so two threads interpreting kernels at once would corrupt each other;
* computes bfloat16 in float32: the interpreter has no real bfloat16 (``tl.dot`` on bfloat16
  returns garbage), so bfloat16 tensors go to the kernel as float32 copies and the results are
  rounded to bfloat16 once, at the end. The record notes it (:data:`BF16_NOTE`).

Compiled CUDA launches need neither: each launch binds its own arguments to a compiled kernel
and shares no Python-level state with other launches, and CUDA has real bfloat16.
"""

from __future__ import annotations

import collections.abc
import contextlib
import contextvars
import functools
import os
import sys
import threading
import types

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402  (after TRITON_INTERPRET is set)


def _interpret_requested() -> bool:
    """Whether Triton decorates kernels for its interpreter, as Triton itself reads it."""
    knobs = getattr(triton, "knobs", None)
    runtime_knobs = getattr(knobs, "runtime", None)
    if runtime_knobs is not None and hasattr(runtime_knobs, "interpret"):
        return bool(runtime_knobs.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on")


#: True when Triton kernels run in the interpreter (CPU tensors), False when compiled for CUDA.
INTERPRETED: bool = _interpret_requested()

#: dtypes every kernel accepts: fp32 accumulation, output in the input dtype.
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: The note recorded with a launch whose bfloat16 tensors were computed in float32.
BF16_NOTE = "bfloat16 computed in float32 and rounded (the interpreter has no bfloat16)"

_IMPORT_ORDER_FIX = (
    "Triton builds its standard library for the compiler or the interpreter when `triton` is "
    "first imported, and it was imported before `fused` without TRITON_INTERPRET=1 (directly, "
    "or through torch.compile / torch._dynamo). Import `fused` before anything that imports "
    "triton, or set TRITON_INTERPRET=1 in the environment before starting Python."
)


def _language_modules() -> list[types.ModuleType]:
    return [m for name, m in list(sys.modules.items())
            if (name == "triton.language" or name.startswith("triton.language."))
            and isinstance(m, types.ModuleType)]


def _interpret_standard_library() -> int:
    """Rebuild Triton's ``@triton.jit`` library functions made for the compiler as interpreter
    functions, as ``import triton`` does with ``TRITON_INTERPRET=1``; return how many.

    The library functions are module attributes of ``triton.language.*`` (one object may be
    bound under several names, and keeps one identity: the interpreter compares reduction
    functions by identity) and methods of ``tl.tensor`` (``x.sum()``), which the interpreter
    import binds as plain functions.
    """
    try:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
    except ImportError as error:  # pragma: no cover - a Triton without these
        raise ImportError(f"facefuse cannot use this Triton's interpreter ({error}). {_IMPORT_ORDER_FIX}") from error

    rebuilt: dict[int, object] = {}

    def interpreted(jit_function):
        if id(jit_function) not in rebuilt:
            rebuilt[id(jit_function)] = InterpretedFunction(jit_function.fn)
        return rebuilt[id(jit_function)]

    def as_method(function):
        def method(*args, **kwargs):
            return function(*args, **kwargs)
        method.__name__ = getattr(function, "__name__", "method")
        return method

    def rebind_closure(function) -> None:
        for cell in function.__closure__ or ():
            if isinstance(cell.cell_contents, JITFunction):
                cell.cell_contents = interpreted(cell.cell_contents)

    for module in _language_modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, JITFunction):
                setattr(module, name, interpreted(value))
            elif isinstance(value, types.FunctionType):
                rebind_closure(value)
            elif isinstance(value, type) and value.__module__.startswith("triton.language"):
                for attr, member in list(vars(value).items()):
                    if isinstance(member, JITFunction):
                        setattr(value, attr, as_method(interpreted(member)))
                    elif isinstance(member, types.FunctionType):
                        rebind_closure(member)
    left = [f"{module.__name__}.{name}" for module in _language_modules()
            for name, value in vars(module).items() if isinstance(value, JITFunction)]
    if left:  # pragma: no cover - a Triton laid out differently
        raise ImportError(f"facefuse could not switch Triton's library to the interpreter "
                          f"({', '.join(left[:3])} ...). {_IMPORT_ORDER_FIX}")
    return len(rebuilt)


#: How many of Triton's library functions were rebuilt for the interpreter at import (0 when
#: ``triton`` was first imported with the interpreter on, as with ``fused`` imported first).
REBUILT_LIBRARY_FUNCTIONS: int = _interpret_standard_library() if INTERPRETED else 0


def backend() -> str:
    """Name of the backend the kernels use here: ``"triton"`` or ``"triton-interpreter"``."""
    return "triton-interpreter" if INTERPRETED else "triton"


def device() -> torch.device:
    """The device the kernels take tensors on here: ``cuda`` when compiled for a GPU, ``cpu`` in
    Triton's interpreter. Lessons and tools put their tensors there."""
    return torch.device("cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu")


def check_inputs(name: str, *tensors: torch.Tensor | None) -> None:
    """Raise a clear error if the tensors cannot go to a kernel on this machine.

    All tensors must share one device, the device must be the one the kernels run on here (CPU
    in the interpreter, CUDA otherwise), and the first tensor's dtype must be supported.
    """
    present = [t for t in tensors if t is not None]
    if not present:
        return
    first = present[0]
    if first.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name}: unsupported dtype {first.dtype}; the Triton kernels take "
            f"float32, float16 or bfloat16 (use the reference path for others)"
        )
    devices = {t.device for t in present}
    if len(devices) > 1:
        raise ValueError(f"{name}: tensors are on different devices: {sorted(map(str, devices))}")
    device = first.device
    expected = "cpu" if INTERPRETED else "cuda"
    if device.type == expected or (device.type == "meta" and _launch_recorder.get() is not None):
        return
    if device.type == "meta":
        raise RuntimeError(
            f"{name}: got meta tensors, which have shapes but no data for a kernel to read. To "
            f"propagate shapes, run the reference forward (`with fused.enabled(False):`); to "
            f"compute, pass real tensors on the {expected.upper()}"
        )
    if INTERPRETED and device.type == "cuda":
        raise RuntimeError(
            f"{name}: got a cuda tensor but Triton runs in interpreter mode "
            f"(TRITON_INTERPRET=1), which takes CPU tensors; unset TRITON_INTERPRET to compile "
            f"for the GPU, or move the tensors to the CPU"
        )
    if INTERPRETED:
        raise RuntimeError(
            f"{name}: got a {device.type} tensor, but the Triton kernels run here in Triton's "
            f"interpreter, which takes CPU tensors. Move the model and input to the CPU with "
            f".cpu(), or run the reference path with `with fused.enabled(False):`"
        )
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{name}: got a {device.type} tensor, but there is no CUDA GPU and Triton's interpreter "
            f"is off (TRITON_INTERPRET is set to a false value). Leave TRITON_INTERPRET unset (fused "
            f"turns the interpreter on without CUDA) or set it to 1 before importing fused, or run "
            f"the reference path with `with fused.enabled(False):`"
        )
    raise RuntimeError(
        f"{name}: got a {device.type} tensor, but on this CUDA machine the Triton kernels run "
        f"on the GPU. Move the model and input there with .cuda(), run the reference path "
        f"with `with fused.enabled(False):` (or FACEFUSE_FUSED=0), or set TRITON_INTERPRET=1 "
        f"before importing fused to interpret the kernels on the CPU"
    )


# -- launches ------------------------------------------------------------------------------------

_LAUNCH_LOCK = threading.RLock()
_emulating_bf16: contextvars.ContextVar[bool] = contextvars.ContextVar("facefuse_bf16_in_fp32", default=False)
_checking_only: contextvars.ContextVar[bool] = contextvars.ContextVar("facefuse_checking_only", default=False)


class _ArgumentsChecked(Exception):
    """Stops a checking-only call of a launcher where it would launch: its checks all passed."""


def launching() -> str | None:
    """Called (through :func:`fused.record.kernel_launched`) just before every kernel launch.

    Returns the note to record with the launch (:data:`BF16_NOTE` or None). During the
    checking-only call that :func:`launcher` makes with bfloat16 arguments, it stops the launcher
    here instead, before anything is launched or written.
    """
    if _checking_only.get():
        raise _ArgumentsChecked
    return BF16_NOTE if _emulating_bf16.get() else None


_launch_recorder: contextvars.ContextVar = contextvars.ContextVar("facefuse_launch_recorder", default=None)


def launch(kernel, grid, *args, **kwargs):
    """Launch ``kernel[grid](*args, **kwargs)``, or hand it to the active :func:`recording_launches`.

    Every kernel launch in :mod:`fused.kernels` goes through this one function (right after
    :func:`fused.record.kernel_launched`), so that tools which must see or redirect launches
    (dry runs at GPU shapes, custom-op tracing) have a single place to do it. Compiled for CUDA,
    a launch from a ``facefuse`` op's body goes through ``torch.library.wrap_triton``, so that
    Inductor sees and schedules the kernel when it traces the op (see :mod:`fused.kernels.ops`);
    ``triton_op`` launches it directly in eager mode.
    """
    recorder = _launch_recorder.get()
    if recorder is not None:
        return recorder(kernel, grid, args, kwargs)
    if _WRAP_TRITON is not None and in_op_body():
        return _WRAP_TRITON(kernel)[grid](*args, **kwargs)
    try:
        return kernel[grid](*args, **kwargs)
    except Exception as exc:  # the interpreter wraps it: InterpreterError(TypeError(...))
        if INTERPRETED and NUMPY_SCALAR_ERROR in str(exc):
            raise RuntimeError(interpreter_numpy_message()) from exc
        raise


#: What numpy 2.4 and later raise when an interpreter converts a one-element array to an int.
NUMPY_SCALAR_ERROR = "only 0-dimensional arrays can be converted to Python scalars"


def interpreter_numpy_message() -> str:
    """Why the interpreter failed, and the fix: Triton 3.6's interpreter (and older) turns a
    runtime integer into a one-element array and calls ``int()`` on it, which numpy 2.4 refuses.
    Compiled kernels (a GPU) are not affected."""
    import numpy

    return (f"Triton {triton.__version__}'s interpreter cannot run with numpy {numpy.__version__}: it converts "
            f"runtime integers (every `range()` over a kernel argument) with int() on one-element arrays, which "
            f"numpy 2.4 and later refuse. Install numpy<2.4 (pip install 'numpy<2.4') or a Triton whose "
            f"interpreter handles it (3.9 does); a GPU, which compiles the kernels, is not affected")


@contextlib.contextmanager
def recording_launches(recorder):
    """Within this context, :func:`launch` calls ``recorder(kernel, grid, args, kwargs)`` instead of
    launching, and :func:`check_inputs` accepts meta tensors: a dry run of a model at real shapes
    with nothing computed (``facefuse inspect``, :mod:`fused.measure.inspect`). Launchers return
    their (unwritten) outputs as usual. Per context, like :func:`fused.recording`."""
    token = _launch_recorder.set(recorder)
    try:
        yield recorder
    finally:
        _launch_recorder.reset(token)


#: ``torch.library.wrap_triton`` when kernels are compiled for CUDA and this torch has it.
_WRAP_TRITON = None if INTERPRETED else getattr(torch.library, "wrap_triton", None)

_op_body = threading.local()


def tracing() -> bool:
    """True while ``torch.compile`` or ``torch.export`` traces a launcher: it then records a
    ``facefuse`` custom op (:mod:`fused.kernels.ops`) instead of launching. False in eager mode
    and inside an op's own body (:func:`op_body`), which launches."""
    if not torch.compiler.is_compiling():
        return False
    if torch.compiler.is_dynamo_compiling():  # Dynamo never traces into an op's body
        return True
    return not in_op_body()


def in_op_body() -> bool:
    """True inside the body of a ``facefuse`` custom op (see :class:`op_body`)."""
    return getattr(_op_body, "active", False)


class op_body:
    """Marks the body of a ``facefuse`` custom op: the launcher it calls launches, even while
    ``torch.compile`` traces the body (a ``triton_op``'s, on CUDA)."""

    def __enter__(self):
        self._previous = getattr(_op_body, "active", False)
        _op_body.active = True

    def __exit__(self, *exc):
        _op_body.active = self._previous


def launcher(function=None, *, float32_result: bool = False):
    """Decorator for a public kernel launcher (a function that calls ``kernel[grid](...)``).

    Compiled for CUDA, it returns the launcher unchanged. In interpreter mode the launcher runs
    under one process-wide re-entrant lock, and a call with bfloat16 tensors is computed in
    float32 (see the module docstring): the launcher is first called with the real arguments
    and stopped just before its first launch, so every check and error message sees the real
    dtypes; then it runs on float32 copies, and what the kernels wrote is rounded back into the
    bfloat16 tensors passed in (``out=`` buffers, slices of a larger buffer included). New
    float32 results are rounded to bfloat16 unless ``float32_result`` (the launcher always
    returns float32, like ``se_squeeze``).
    """
    def decorate(fn):
        if not INTERPRETED:
            return fn

        @functools.wraps(fn)
        def serialised(*args, **kwargs):
            if tracing():  # the launcher records a custom op, whose body comes back here to launch
                return fn(*args, **kwargs)
            if _checking_only.get():  # inside another launcher's checking-only call
                return fn(*args, **kwargs)
            with _LAUNCH_LOCK:
                if not _has_bfloat16((args, kwargs)):
                    return fn(*args, **kwargs)
                return _bfloat16_in_float32(fn, args, kwargs, float32_result)

        return serialised

    return decorate if function is None else decorate(function)


def _has_bfloat16(tree) -> bool:
    if isinstance(tree, torch.Tensor):
        return tree.dtype == torch.bfloat16
    if isinstance(tree, dict):
        return any(_has_bfloat16(v) for v in tree.values())
    if type(tree) in (tuple, list):
        return any(_has_bfloat16(v) for v in tree)
    return False


def _map(tree, fn):
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map(v, fn) for k, v in tree.items()}
    if type(tree) in (tuple, list):
        return type(tree)(_map(v, fn) for v in tree)
    return tree


class _Float32Copies:
    """Float32 stand-ins for bfloat16 tensors that address memory exactly like the originals.

    Each bfloat16 storage gets one float32 copy of the whole storage, and each tensor a view of
    it with the original's sizes, strides and offset: a slice of a buffer stays a slice, and two
    arguments sharing memory still share it.
    """

    def __init__(self):
        self.storages: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.originals: dict[int, torch.Tensor] = {}  # id(stand-in) -> original

    def stand_in(self, t: torch.Tensor) -> torch.Tensor:
        if t.dtype != torch.bfloat16:
            return t
        key = t.untyped_storage().data_ptr()
        if key not in self.storages:
            flat = t.as_strided((t.untyped_storage().nbytes() // t.element_size(),), (1,), 0)
            copy = flat.float()
            self.storages[key] = (flat, copy, copy.clone())
        view = self.storages[key][1].as_strided(t.shape, t.stride(), t.storage_offset())
        self.originals[id(view)] = t
        return view

    def write_back(self) -> None:
        """Round what the kernels changed back into the bfloat16 originals (nothing else)."""
        for flat, copy, before in self.storages.values():
            changed = copy.view(torch.int32) != before.view(torch.int32)
            if bool(changed.any()):
                with torch.inference_mode(flat.is_inference()):
                    flat[changed] = copy[changed].to(torch.bfloat16)

    def result(self, t: torch.Tensor, float32_result: bool) -> torch.Tensor:
        """The launcher's result as it would be without the stand-ins."""
        if id(t) in self.originals:
            return self.originals[id(t)]
        for flat, copy, _ in self.storages.values():
            if t.untyped_storage().data_ptr() == copy.untyped_storage().data_ptr():
                return flat.as_strided(t.shape, t.stride(), t.storage_offset())
        if t.dtype == torch.float32 and not float32_result:
            return t.to(torch.bfloat16)
        return t


def _bfloat16_in_float32(fn, args, kwargs, float32_result: bool):
    # iterators (a generator of outputs, say) are read once per call: make them tuples
    args = tuple(tuple(a) if isinstance(a, collections.abc.Iterator) else a for a in args)
    kwargs = {k: tuple(v) if isinstance(v, collections.abc.Iterator) else v for k, v in kwargs.items()}
    token = _checking_only.set(True)
    try:
        return fn(*args, **kwargs)  # returned without launching anything: nothing to emulate
    except _ArgumentsChecked:
        pass
    finally:
        _checking_only.reset(token)
    copies = _Float32Copies()
    with torch.no_grad():
        args32, kwargs32 = _map(args, copies.stand_in), _map(kwargs, copies.stand_in)
    token = _emulating_bf16.set(True)
    try:
        result = fn(*args32, **kwargs32)
    finally:
        _emulating_bf16.reset(token)
    with torch.no_grad():
        copies.write_back()
        return _map(result, lambda t: copies.result(t, float32_result))
