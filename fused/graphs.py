"""``fused.cuda_graph(model, example_input)``: capture a fused forward once, replay it on every call.

At batch 1 a fused model is launch-bound: each kernel finishes in microseconds, and launching it
from Python costs about as much. A CUDA graph records the whole forward's launches once; a replay
submits them all with one call, so the Python and launch overhead is paid once per forward::

    net = fused.cuda_graph(fused.fuse(model).cuda().eval(), x)   # captures now
    boxes, scores, landmarks = net(x)                            # replays

The usual CUDA graph rules, and what this wrapper does about each:

* **Static shapes.** A graph replays fixed kernels on fixed addresses. Each call copies its input
  into the graph's own input buffer; a call whose input shape, dtype or device differs from the
  captured one re-captures first (one eager forward, then the capture). Other strides are fine:
  the input is copied.
* **Weights and settings.** The graph reads the folded weights where they were at capture.
  Before every replay the wrapper checks (:class:`CaptureKey`) that the model still has the same
  modules, each with the same attribute objects (settings such as ``training``,
  ``negative_slope``, ``precision``, a RetinaFace's ``phase``, and its fold cache) and the same
  parameter and buffer tensors at the same addresses and version counters; and that the fused
  flag and autocast are as at capture. Any difference re-captures. So every change that the fold
  cache sees (see :mod:`fused.base`) re-captures: in-place ops on a parameter, ``copy_``,
  ``load_state_dict``, ``.to()``, replacing a parameter or a module, setting an attribute (even
  to an equal value), :func:`fused.refresh`. Like the fold cache, it cannot see writes that
  bypass the version counter (``p.data.mul_(2)``, a NumPy view): call :func:`fused.refresh` after
  those; it drops the fold caches, so the next call re-captures. Parameters made under
  ``torch.inference_mode()`` have no version counter: such a model is refused (build it outside
  inference mode). A tensor kept as a plain attribute (neither parameter nor buffer) is compared
  by identity only. The check walks the model in Python on every call (a fraction of a
  millisecond for RetinaFace), about what the eager fused forward spends on its fold caches.
* **Outputs.** Replays write into the same output tensors. By default each call returns clones,
  which the caller may keep; ``clone=False`` returns the graph's own outputs, valid only until the
  next call (faster, one copy less per output).
* **Python code runs at capture only**: forward hooks, prints and the :func:`fused.recording`
  events happen when the graph is captured, not on replays.
* **CUDA only**: there is no CUDA graph in Triton's interpreter or on the CPU; there the wrapper
  raises a RuntimeError saying to call the model directly.

The wrapper is not thread-safe (one input buffer): give each thread its own.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
from torch import nn

from . import flag, runtime

def _no_version_counter() -> ValueError:
    return ValueError(
        "fused.cuda_graph: the model has parameters or buffers made under torch.inference_mode(), "
        "which have no version counter, so a captured graph could not tell when they change. Build "
        "(or load) the model outside inference mode, e.g. outside `with torch.inference_mode():`")


class CaptureKey:
    """What a captured graph of ``model(x)`` depends on; the graph is replayed only while it is equal.

    Two parts. ``objects``, compared by identity: every module, each module's attribute values
    (its settings, ``training``, its fold cache...) and every parameter and buffer tensor. The key
    holds them, so none can be freed and its identity reused while the key stands: a changed
    identity is a changed object. ``values``, compared by value: the input's shape, dtype and
    device, the fused flag, autocast, and each parameter's and buffer's address and version
    counter. Built in one walk on every call, mostly in C (``tuple(module.__dict__.values())``).
    """

    __slots__ = ("objects", "values")

    def __init__(self, model: nn.Module, x: torch.Tensor):
        device_type = x.device.type
        values: list = [x.shape, x.dtype, x.device, flag.is_enabled(), flag.disabled_block_types()]
        if device_type in ("cuda", "cpu"):
            values += [torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)]
        objects: list = []
        stack = [model]
        while stack:
            m = stack.pop()
            objects.append(m)
            objects += m.__dict__.values()
            for tensors in (m._parameters.values(), m._buffers.values()):
                for t in tensors:
                    if t is not None:
                        objects.append(t)
                        try:
                            values += (t.data_ptr(), t._version)
                        except RuntimeError as error:  # an inference tensor has no version counter
                            raise _no_version_counter() from error
            stack.extend(child for child in m._modules.values() if child is not None)
        self.objects, self.values = objects, values

    def __eq__(self, other) -> bool:
        return (isinstance(other, CaptureKey) and self.values == other.values
                and len(self.objects) == len(other.objects) and all(map(operator.is_, self.objects, other.objects)))

    __hash__ = None


def _map(tree, fn):
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map(t, fn) for t in tree)
    if isinstance(tree, dict):
        return {k: _map(v, fn) for k, v in tree.items()}
    return tree


class CudaGraphModel:
    """``model`` captured in a CUDA graph, replayed on every call (see :func:`cuda_graph`).

    ``captures`` counts the captures so far (1 after construction). :meth:`check_device` and
    :meth:`capture` are the only CUDA-specific steps (tests replace them to check the
    re-capture rules on a CPU).
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, *, clone: bool = True, warmup: int = 2):
        if not isinstance(model, nn.Module):
            raise TypeError(f"fused.cuda_graph takes an nn.Module, got {type(model).__name__}")
        if not isinstance(example_input, torch.Tensor):
            raise TypeError(f"fused.cuda_graph takes one input tensor, got {type(example_input).__name__}")
        self.model = model
        self.clone = bool(clone)
        self.warmup = int(warmup)
        self.captures = 0
        self._key: Any = None
        self._input: torch.Tensor | None = None
        self._outputs: Any = None
        self._replay: Callable[[], None] | None = None
        self.check_device(example_input)
        self._recapture(example_input)

    def check_device(self, x: torch.Tensor) -> None:
        """Raise unless ``x`` and this machine can run a CUDA graph of compiled kernels."""
        if runtime.INTERPRETED or not torch.cuda.is_available():
            raise RuntimeError(
                "fused.cuda_graph needs a CUDA GPU: here the Triton kernels run in Triton's interpreter "
                "on the CPU (no CUDA, or TRITON_INTERPRET=1), which has no CUDA graphs. Call the model "
                "directly instead: model(x)")
        if x.device.type != "cuda":
            raise ValueError(
                f"fused.cuda_graph: the input is on {x.device}, but CUDA graphs capture GPU work; move "
                f"the model and the input to the GPU: model.cuda(), x.cuda()")

    def capture(self, static_input: torch.Tensor) -> tuple[Callable[[], None], Any]:
        """Run ``model(static_input)`` ``warmup`` times on a side stream (compiles the kernels, folds
        the weights), then capture one forward; return ``(replay, static outputs)``."""
        device = static_input.device
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(max(self.warmup, 1)):
                self.model(static_input)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            outputs = self.model(static_input)
        return graph.replay, outputs

    def _recapture(self, x: torch.Tensor) -> None:
        if self.model.training:
            raise ValueError("fused.cuda_graph: the model is in training mode (BatchNorm statistics would "
                             "update on every replay); call model.eval() first")
        self._replay = self._outputs = None  # free the old graph's buffers first
        with torch.inference_mode(False):  # a normal tensor: calls inside and outside inference mode copy into it
            self._input = torch.empty_like(x)
        self._input.copy_(x)
        self._replay, self._outputs = self.capture(self._input)
        # The graph reads the folds by address; the key holds them, and every parameter and buffer.
        self._key = CaptureKey(self.model, x)
        self.captures += 1

    def __call__(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"fused.cuda_graph: the call takes one input tensor, got {type(x).__name__}")
        if CaptureKey(self.model, x) != self._key:
            self.check_device(x)
            self._recapture(x)
        self._input.copy_(x)
        self._replay()
        if not self.clone:
            return self._outputs
        return _map(self._outputs, torch.Tensor.clone)


def cuda_graph(model: nn.Module, example_input: torch.Tensor, *, clone: bool = True) -> CudaGraphModel:
    """Capture ``model``'s forward on ``example_input`` in a CUDA graph; return a callable that replays it.

    ``model`` is usually :func:`fused.fuse`'s result, on the GPU and in eval mode; ``example_input``
    fixes the shape, dtype and device (a call with another re-captures). Each call copies its input
    into the graph, replays, and returns clones of the outputs (``clone=False``: the graph's own
    output tensors, overwritten by the next call). Weight and setting changes re-capture; see
    :mod:`fused.graphs` for exactly what is detected. Raises RuntimeError on a machine without CUDA
    (Triton's interpreter), ValueError for a CPU input or a model in training mode.
    """
    return CudaGraphModel(model, example_input, clone=clone)
