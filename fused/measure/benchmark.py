"""The GPU benchmark every kernel family shares: correctness first, then every baseline side by side.

    from fused.measure import benchmark
    cases = benchmark.family_cases("conv_bn", size=640, batches=(1, 16), dtype=torch.float16, device="cuda")
    results = benchmark.run_cases(cases, "cuda")
    benchmark.write_results(results, "facefuse-bench", device="cuda")

For every :class:`BenchCase`, :func:`run_cases`

1. checks the fused path against a float64 run of the reference with
   :func:`fused.tolerance.assert_close`, in NCHW and in channels_last; a case that fails (or whose
   fused module fell back to the reference forward) is recorded as such and **not timed**;
2. times, in one run and on one input: eager PyTorch (NCHW), eager PyTorch channels_last,
   ``torch.compile(mode="max-autotune")`` of the eager reference (a compile failure is recorded,
   not raised), the fused path on NCHW and on channels_last input, and with ``fused_compile=True``
   ``torch.compile`` of the fused path (``fused_compile_ms``: its kernels are ``torch.ops.facefuse``
   operators; checked against float64 first, GPU only, same mode as the baseline), each with
   :func:`fused.measure.timing.time_callable` (warm-up, median; optionally CUDA graphs);
3. reports each time, the speedup of the best fused layout over each baseline, the bytes the case
   must move, the achieved GB/s and the percentage of the machine's measured copy bandwidth
   (:func:`measure_bandwidth`, the memory roofline).

Results go to CSV and JSON with :func:`fused.measure.environment.describe` (GPU, driver, versions, date)
and a PNG of the speedups. On a CPU the fused kernels run in Triton's interpreter: its timings
are not speedups, so fused times stay empty there (correctness and baselines still run).

A kernel family is one line: :func:`register_family` names it, the model(s) it comes from and
the block types it benchmarks; :func:`block_cases` then finds every distinct shape of those
blocks in the model (by hooks, during one forward pass) and builds the cases, for any block type
that :func:`fused.fuse` can swap, whatever its input (a tensor, or a list of tensors like the
FPN's)::

    register_family("ssh", ("retinaface",), ("SSH",), "RetinaFace's context modules")

A family may benchmark a part of each block instead of the whole (``part=``): the ``depthwise``
family times the depthwise kernel alone against the first half of each ``conv_dw`` block.

A family whose block types are not all registered in ``fused.REGISTRY`` is left out by
:func:`families`.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

import reference

from ..conv_bn_act import activation_of
from ..flag import enabled
from ..folding import fold_batchnorm
from ..fuse import REGISTRY, fuse
from ..kernels.depthwise import depthwise_conv_bias_act
from ..record import recording
from ..tolerance import reduction_length
from . import environment, timing
from .ceilings import copy_bandwidth
from .models import ARCFACE_SIZE, MODELS, build_model, example_input
from .tensors import compare, double, leaf_flops, map_tensors, nbytes, shapes, state_bytes, tensors
from .timing import first_line

# --------------------------------------------------------------------------------------------
# Memory roofline
# --------------------------------------------------------------------------------------------


def measure_bandwidth(device, *, nbytes: int | None = None, repeats: int = 20) -> float:
    """Copy bandwidth of ``device`` in GB/s, memoised per process (:func:`fused.measure.ceilings.copy_bandwidth`).

    A ``dst.copy_(src)`` of a large buffer (512 MiB on a GPU, 64 MiB on a CPU) timed with
    :func:`fused.measure.timing.time_callable`; what a memory-bound kernel can hope to reach.
    :func:`fused.measure.ceilings.measure` adds the matmul roof and caches both on disk.
    """
    return copy_bandwidth(device, nbytes=nbytes, repeats=repeats)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass
class BenchCase:
    """One shape of one kernel family.

    ``fused_fn(x)`` runs the fused path; ``reference_fn(x)`` is the eager reference (a module is
    best: it can be copied to float64, to channels_last and compiled). ``reference64_fn`` overrides
    the float64 reference when ``reference_fn`` is a plain function that cannot take float64.
    ``bytes_moved`` is what the case must read and write at least; ``flops`` counts 2 x MACs;
    ``reduction_length`` feeds the tolerance.
    """

    name: str
    family: str
    shape: str
    fused_fn: Callable
    reference_fn: Callable
    x: torch.Tensor | list  # the one positional argument: a tensor, or a list of tensors (FPN)
    bytes_moved: int
    flops: int
    reduction_length: int
    reference64_fn: Callable | None = None
    info: dict = field(default_factory=dict)


def float64_reference(case: BenchCase, x=None):
    """The case's reference output computed in float64 (on ``x``, default the case's input)."""
    x = double(case.x if x is None else x)
    if case.reference64_fn is not None:
        return case.reference64_fn(x)
    if isinstance(case.reference_fn, nn.Module):
        return copy.deepcopy(case.reference_fn).double()(x)
    return case.reference_fn(x)


def _channels_last(x):
    """``x`` (a tensor or nested tensors) with every 4-d tensor in channels_last."""
    return map_tensors(x, lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t)


def _dtype(x) -> torch.dtype:
    return next(tensors(x)).dtype


def block_cases(
    family: str,
    model: nn.Module,
    block_types,
    example_input: torch.Tensor,
    *,
    batches=(1,),
    seed: int = 0,
    tag: str = "",
    part: Callable | None = None,
) -> list[BenchCase]:
    """One case per distinct (block type, input shapes, weight shapes, strides) among ``model``'s
    blocks of ``block_types``, for each batch size. Inputs are recorded by hooks during one forward
    pass of ``model`` on ``example_input`` (batch 1 is enough: other batches change N only). A
    block's one positional argument may be a tensor or a list of tensors (the FPN's three levels).

    The fused module is :func:`fused.fuse` of a copy of the block; the reference is the block.
    ``part(block)``, when given, returns ``(name, reference module, fused callable)`` to benchmark
    instead (a part of the block; cases are then distinct per part). ``tag`` is appended to the
    case names (to tell apart the same block of two models).
    """
    model = model.eval()
    wanted = set(block_types)
    found: dict[tuple, tuple[str, nn.Module, str, object]] = {}
    handles = []

    def hook(path, module, kind):
        def pre(mod, args):
            if len(args) != 1:
                return  # a case calls fn(x): blocks with one positional argument only
            shapes = tuple(tuple(t.shape[1:]) for t in tensors(args[0]))
            weights = tuple(tuple(p.shape) for p in module.parameters())
            strides = tuple(m.stride for m in module.modules() if isinstance(m, nn.Conv2d))
            key = (kind, shapes, weights, strides)
            found.setdefault(key, (path, module, kind, map_tensors(args[0], lambda t: t.detach()[:1].clone())))
        return pre

    for path, module in model.named_modules():
        kind = reference.block_type(module) or type(module).__name__  # as fused.fuse names it ("ResNetArcFace")
        if kind in wanted:
            handles.append(module.register_forward_pre_hook(hook(path, module, kind)))
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()

    cases = []
    g = torch.Generator().manual_seed(seed + 7)
    device, dtype = example_input.device, example_input.dtype
    parts_seen = set()
    for (kind, shapes_in, _, _), (path, block, _, template) in found.items():
        if part is None:
            name, reference_fn, fused_fn = kind, block, fuse(copy.deepcopy(block))
        else:
            name, reference_fn, fused_fn = part(block)
            key = (name, shapes_in, tuple(tuple(p.shape) for p in reference_fn.parameters()),
                   tuple(m.stride for m in reference_fn.modules() if isinstance(m, nn.Conv2d)))
            if key in parts_seen:
                continue  # the same part in blocks that differ elsewhere
            parts_seen.add(key)
        for batch in batches:
            x = map_tensors(template, lambda t: torch.randn((batch, *t.shape[1:]), generator=g).to(device=device, dtype=dtype))
            flops, out_bytes = _count(reference_fn, x)
            convs = [m for m in reference_fn.modules() if isinstance(m, nn.Conv2d)]
            desc = (f"{convs[0].in_channels}->{convs[-1].out_channels} k{convs[0].kernel_size[0]} s{max(c.stride[0] for c in convs)}"
                    if convs else "")
            shape = shapes(x)
            cases.append(BenchCase(
                name=" ".join(filter(None, [name, desc, shape.replace(";", "+"), tag])),
                family=family,
                shape=shape,
                fused_fn=fused_fn,
                reference_fn=reference_fn,
                x=x,
                bytes_moved=nbytes(x) + out_bytes + state_bytes(reference_fn),
                flops=flops,
                reduction_length=reduction_length(reference_fn),
                info={"block_type": kind, "example_path": path, "batch": batch, "model_tag": tag},
            ))
    return cases


def _count(block: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(2 x MACs of the block's convs and linears, output bytes) for one call on ``x``."""
    total = [0]
    handles = [m.register_forward_hook(lambda m, a, o: total.__setitem__(0, total[0] + leaf_flops(m, o)))
               for m in block.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            out = block(x)
    finally:
        for h in handles:
            h.remove()
    return total[0], nbytes(out)


CONV_BN_TYPES = ("conv_bn", "conv_bn_no_relu", "conv_bn1X1")


@dataclass(frozen=True)
class Family:
    """A kernel family: the block types it benchmarks, in which models (names of
    :data:`fused.measure.models.MODELS`). ``"retinaface"`` in ``models`` stands for the RetinaFace
    variant(s) ``facefuse bench --model`` selects (default mobile0.25); any other name is fixed."""

    name: str
    models: tuple[str, ...]
    block_types: tuple[str, ...]
    description: str = ""
    part: Callable | None = None  # see block_cases; None: the whole block
    racecheck: str = ""  # why compute-sanitizer's racecheck runs it (tools.sanitize_run)


#: family name → :class:`Family`, in the order ``facefuse bench`` runs them.
FAMILIES: dict[str, Family] = {}


#: Why a family goes under racecheck unless its ``register_family`` line says otherwise.
RACECHECK_DEFAULT = "its kernels stage tl.dot tiles or tl.sum reductions through shared memory"


def register_family(name: str, models, block_types, description: str = "", *, part=None,
                    racecheck: str = RACECHECK_DEFAULT) -> Family:
    """Add (or replace) a kernel family: one line per family, e.g.
    ``register_family("fpn", ("retinaface",), ("FPN",))``. ``part`` benchmarks a part of each
    block instead of the whole (see :func:`block_cases`); ``racecheck`` says why
    :mod:`tools.sanitize_run` also runs it under compute-sanitizer's racecheck."""
    family = Family(name, tuple(models), tuple(block_types), description, part, racecheck)
    FAMILIES[name] = family
    return family


class DepthwiseKernel:
    """The depthwise kernel alone, as the two-kernel path of ``FusedConvDW`` launches it:
    :func:`fused.kernels.depthwise.depthwise_conv_bias_act` with the BN folded in and the
    LeakyReLU in its epilogue. Calling it runs that one kernel; the weights are folded once, and
    cast once per dtype and device."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: nn.Module):
        self.stride = conv.stride[0]
        self.activation, self.slope = activation_of(act)
        self.weight, self.bias = fold_batchnorm(conv.weight, conv.bias, bn)
        self.cast = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.dtype, x.device)
        if key not in self.cast:
            self.cast[key] = (self.weight.to(device=x.device, dtype=x.dtype), self.bias.to(x.device))
        weight, bias = self.cast[key]
        return depthwise_conv_bias_act(x, weight, bias, stride=self.stride, activation=self.activation, slope=self.slope)


def depthwise_part(block: nn.Sequential) -> tuple[str, nn.Module, DepthwiseKernel]:
    """The ``depthwise`` family's part of a ``conv_dw`` block: its first half (depthwise 3x3, BN,
    LeakyReLU) in eager PyTorch, and the depthwise kernel alone (:class:`DepthwiseKernel`), not
    ``FusedConvDW``, which may run the whole block as one kernel."""
    half = nn.Sequential(*list(block)[:3]).eval()
    return "depthwise", half, DepthwiseKernel(*half)


register_family("conv_bn", ("retinaface",), CONV_BN_TYPES,
                "conv -> BN -> activation blocks of RetinaFace (stem, FPN, SSH)",
                racecheck="the implicit GEMM's tl.dot tiles are staged through shared memory")
register_family("conv_dw", ("retinaface",), ("conv_dw",), "MobileNetV1's depthwise-separable blocks",
                racecheck="the depthwise result feeds tl.dot with the pointwise weights through shared memory")
register_family("depthwise", ("retinaface",), ("conv_dw",),
                "the depthwise 3x3 kernel alone (conv_dw's first half: depthwise conv, BN, LeakyReLU)", part=depthwise_part,
                racecheck="no tl.dot and no reduction (nine FMAs per output), so little for racecheck: run for "
                          "completeness, since Triton may still convert register layouts through shared memory")
register_family("squeeze_excite", ("arcface-se",), ("SEBlock",), "the SEBlocks of ArcFace IR-18 with SE",
                racecheck="its reductions (the squeeze's mean, the excite's matrix-vector products) are tl.sum "
                          "across warps, which Triton does through shared memory")
register_family("irblock", ("arcface", "arcface-se"), ("IRBlock",), "ArcFace's residual blocks, with and without SE",
                racecheck="tl.dot of its convs, and the SE reductions, through shared memory")
register_family("bottleneck", ("retinaface-resnet50",), ("Bottleneck",), "ResNet-50's bottleneck blocks",
                racecheck="tl.dot through shared memory, at ResNet-50's shapes (up to 2048 channels)")
register_family("arcface_model", ("arcface", "arcface-se"), ("ResNetArcFace",),
                "the whole fused ArcFace (stem conv+BN+PReLU in one kernel, BNs folded into fc5)",
                racecheck="the stem's and fc5's tl.dot through shared memory")
register_family("ssh", ("retinaface",), ("SSH",), "RetinaFace's context modules (branches into one buffer, ReLU in the epilogues)",
                racecheck="tl.dot through shared memory, writing channel slices of one buffer")
register_family("fpn", ("retinaface",), ("FPN",), "RetinaFace's feature pyramid (upsample-and-add in the lateral convs' epilogue)",
                racecheck="the lateral 1x1 GEMM (tl.dot) through shared memory")
register_family("heads", ("retinaface",), ("ClassHead", "BboxHead", "LandmarkHead"),
                "RetinaFace's prediction heads, each stored straight into [N, H*W*A, V]",
                racecheck="the heads' 1x1 GEMM (tl.dot) through shared memory")
register_family("retinaface_model", ("retinaface",), ("RetinaFace",),
                "the whole fused detector (per level, the three heads as one GEMM into the final outputs)",
                racecheck="every RetinaFace kernel, in the whole detector's configuration")


def _model_and_input(model_name: str, size: int, dtype, device, seed: int):
    """A seeded model (BatchNorm statistics randomised) and a batch-1 input at its real size."""
    net = build_model(model_name, seed=seed).to(device=device, dtype=dtype)
    side = ARCFACE_SIZE if model_name.startswith("arcface") else size
    x = example_input(model_name, (side, side), 1, dtype=dtype, device=device, seed=seed)
    return net, x


def _models_of(family: Family, retinaface=("retinaface",)) -> list[str]:
    out = []
    for m in family.models:
        for name in (retinaface if m == "retinaface" else (m,)):
            if name not in out:
                out.append(name)
    return out


def family_cases(family: str | Family, *, retinaface=("retinaface",), size: int = 640, batches=(1, 16),
                 dtype=torch.float16, device="cuda", seed: int = 0) -> list[BenchCase]:
    """Every case of ``family``: each distinct shape of its block types in each of its models.

    ``retinaface`` is the RetinaFace variant(s) that ``"retinaface"`` in a family stands for;
    ``size`` the RetinaFace input side (ArcFace is always 128x128).
    """
    family = FAMILIES[family] if isinstance(family, str) else family
    models = [m for m in _models_of(family, tuple(retinaface)) if m in MODELS]
    cases = []
    for model_name in models:
        net, x = _model_and_input(model_name, size, dtype, device, seed)
        tag = f"[{model_name}]" if len(models) > 1 else ""
        cases += block_cases(family.name, net, family.block_types, x, batches=batches, seed=seed, tag=tag,
                             part=family.part)
    return cases


def families() -> list[str]:
    """The families whose fused modules exist in this checkout."""
    return [name for name, family in FAMILIES.items() if all(t in REGISTRY for t in family.block_types)]


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

TIME_COLUMNS = ("eager_ms", "eager_cl_ms", "compile_ms", "fused_ms", "fused_cl_ms", "fused_compile_ms")
BASELINES = {"eager": "eager_ms", "eager_cl": "eager_cl_ms", "compile": "compile_ms"}
COLUMNS = [
    "case", "family", "shape", "dtype", "device", "status", "max_abs_error", "max_abs_error_cl", "kernels",
    "error", "bytes_moved", "flops", "reduction_length", *TIME_COLUMNS, "timing_method",
    "speedup_eager", "speedup_eager_cl", "speedup_compile", "fused_best_layout",
    "fused_gbps", "roofline_gbps", "roofline_pct", "eager_gbps", "eager_kernels", "eager_cl_kernels",
    "compile_error", "fused_compile_error", "speedup_fused_compile_vs_compile", "compile_s", "note",
]


def eager_gpu_kernels(fn, device) -> str | None:
    """Names of the GPU kernels ``fn()`` launches (torch.profiler), e.g. which depthwise kernel eager
    PyTorch dispatches in NCHW vs channels_last; None on CPU."""
    if torch.device(device).type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    names = {e.name for e in prof.events() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA}
    return "; ".join(sorted(names)) or None


def _check(case: BenchCase, x, expected) -> tuple[float, str | None, list[str], list[str]]:
    """Run the fused path on ``x``: (max error, failure message or None, kernels, fallbacks).
    Outputs may be one tensor or several (a list or tuple): every one is checked."""
    with torch.no_grad(), enabled(True), recording() as rec:
        actual = case.fused_fn(x)
    err, message = compare(actual, expected, reduction_length=case.reduction_length, what=case.name)
    fallbacks = [f"{block or '?'}: {reason}" for block, reason in rec.fallbacks()]
    return err, message, sorted(rec.kernels()), fallbacks


def _time_fused_compile(case: BenchCase, x, expected, mode: str, cuda_graphs: bool, r: dict, timed, notes) -> None:
    """``torch.compile`` of the fused path (its kernels are ``torch.ops.facefuse`` operators, which
    Inductor schedules with the rest of the graph), checked against ``expected``, then timed into
    ``fused_compile_ms``; a failure goes to ``fused_compile_error``, never raised."""
    fn = case.fused_fn
    try:
        torch._dynamo.reset()  # a fresh cache per case: no recompile limit, no stale guards
        compiled = torch.compile(copy.deepcopy(fn) if isinstance(fn, nn.Module) else fn, mode=mode, fullgraph=True)
        with torch.no_grad(), enabled(True):
            actual = compiled(x)  # compile (and autotune) outside the timing
        _, message = compare(actual, expected, reduction_length=case.reduction_length, what=case.name)
        if message:
            raise AssertionError(message)
    except Exception as exc:
        r["fused_compile_error"] = first_line(exc)
        notes.append("fused + torch.compile failed or was wrong, not timed")
        return
    with enabled(True):
        timed("fused_compile_ms", lambda: compiled(x), graph=cuda_graphs and mode == "default")
    if r["fused_compile_ms"] and r["compile_ms"]:
        r["speedup_fused_compile_vs_compile"] = r["compile_ms"] / r["fused_compile_ms"]


def run_cases(
    cases,
    device,
    *,
    warmup: int = 10,
    repeats: int = 100,
    cuda_graphs: bool = False,
    compile_mode: str | None = "max-autotune",
    time_fused: bool | None = None,
    progress=None,
    ceilings=None,
    fused_compile: bool = False,
) -> list[dict]:
    """Check, then time every case (see the module docstring); one result dict per case.

    ``compile_mode=None`` skips ``torch.compile``. ``time_fused`` defaults to True exactly when the
    kernels are compiled for a GPU; it is forced off in Triton's interpreter (its timings are not
    speedups). ``ceilings`` (a :class:`fused.ceilings.Ceilings`) gives the copy bandwidth of the
    roofline columns; by default it is measured now (:func:`measure_bandwidth`). ``fused_compile``
    adds ``torch.compile`` of the fused path (``compile_mode``), checked then timed with the fused
    path (``fused_compile_ms``); off by default: one more compile per case.
    """
    say = progress or (lambda line: None)
    device = torch.device(device)
    on_gpu = timing.times_fused(device)
    time_fused = on_gpu if time_fused is None else (time_fused and on_gpu)
    bandwidth = ceilings.copy_gbps if ceilings is not None else measure_bandwidth(device)
    results = []
    for i, case in enumerate(cases, 1):
        r = {c: None for c in COLUMNS}
        r.update(case=case.name, family=case.family, shape=case.shape, dtype=str(_dtype(case.x)).replace("torch.", ""),
                 device=device.type, bytes_moved=case.bytes_moved, flops=case.flops,
                 reduction_length=case.reduction_length, roofline_gbps=bandwidth)
        results.append(r)
        x = map_tensors(case.x, lambda t: t.to(device))
        x_cl = _channels_last(x)
        # 1. correctness first, in both layouts
        try:
            with torch.no_grad():
                expected = float64_reference(case)
            err, message, kernels, fallbacks = _check(case, x, expected)
            err_cl, message_cl, kernels_cl, fallbacks_cl = _check(case, x_cl, expected)
        except Exception as exc:  # a crashing kernel is a failed case, not a crashed benchmark
            r.update(status="failed", error=first_line(exc))
            say(f"[{i}/{len(cases)}] {case.name}: FAILED ({r['error']})")
            continue
        r.update(max_abs_error=err, max_abs_error_cl=err_cl, kernels=", ".join(sorted(set(kernels) | set(kernels_cl))))
        if message or message_cl:
            r.update(status="failed", error="; ".join(m for m in (message, message_cl and f"channels_last: {message_cl}") if m))
            say(f"[{i}/{len(cases)}] {case.name}: FAILED correctness, not timed ({r['error']})")
            continue
        if fallbacks or fallbacks_cl or not (kernels and kernels_cl):
            r.update(status="fallback", error="; ".join(sorted(set(fallbacks + fallbacks_cl))) or "no kernel launched")
            say(f"[{i}/{len(cases)}] {case.name}: fused path fell back to the reference, not timed ({r['error']})")
            continue
        r["status"] = "ok"

        # 2. every variant, one after the other, on the same input
        notes = []

        def timed(column, fn, graph: bool = cuda_graphs):
            """Median ms of ``fn`` into ``r[column]``; a failure is noted, not raised."""
            try:
                with torch.no_grad():
                    t = timing.time_callable(fn, device, warmup=warmup, repeats=repeats,
                                             cuda_graph=graph and device.type == "cuda")
            except Exception as exc:
                notes.append(f"{column[:-3]} not timed: {first_line(exc)}")
                return
            r[column] = t.median_ms
            r["timing_method"] = r["timing_method"] or t.method

        ref = case.reference_fn
        ref_cl = copy.deepcopy(ref).to(memory_format=torch.channels_last) if isinstance(ref, nn.Module) else ref
        with enabled(False):
            timed("eager_ms", lambda: ref(x))
            timed("eager_cl_ms", lambda: ref_cl(x_cl))
            try:  # which kernels eager PyTorch chose in each layout (they differ for depthwise)
                r["eager_kernels"] = eager_gpu_kernels(lambda: ref(x), device)
                r["eager_cl_kernels"] = eager_gpu_kernels(lambda: ref_cl(x_cl), device)
            except Exception as exc:
                notes.append(f"eager kernels not recorded: {first_line(exc)}")
        if compile_mode:
            try:
                torch._dynamo.reset()  # a fresh cache per case: no recompile limit, no stale guards
                compiled = torch.compile(copy.deepcopy(ref) if isinstance(ref, nn.Module) else ref, mode=compile_mode)
                started = time.perf_counter()
                with torch.no_grad(), enabled(False):
                    compiled(x)  # compile (and autotune) outside the timing
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                r["compile_s"] = time.perf_counter() - started
            except Exception as exc:
                r["compile_error"] = first_line(exc)
                notes.append("torch.compile failed")
            else:
                # max-autotune and reduce-overhead capture their own CUDA graphs: do not nest ours
                timed("compile_ms", lambda: compiled(x), graph=cuda_graphs and compile_mode == "default")
                if cuda_graphs and compile_mode != "default":
                    notes.append(f"compile timed with CUDA events (mode {compile_mode} uses its own CUDA graphs)")
        if time_fused:
            with enabled(True):
                timed("fused_ms", lambda: case.fused_fn(x))
                timed("fused_cl_ms", lambda: case.fused_fn(x_cl))
            layouts = [(name, r[c]) for name, c in (("nchw", "fused_ms"), ("channels_last", "fused_cl_ms")) if r[c]]
            if layouts:
                best_layout, best = min(layouts, key=lambda p: p[1])
                r["fused_best_layout"] = best_layout
                for name, column in BASELINES.items():
                    if r[column] is not None:
                        r[f"speedup_{name}"] = r[column] / best
                r["fused_gbps"] = case.bytes_moved / (best * 1e-3) / 1e9
                r["roofline_pct"] = 100.0 * r["fused_gbps"] / bandwidth
            if compile_mode and fused_compile:
                _time_fused_compile(case, x, expected, compile_mode, cuda_graphs, r, timed, notes)
        else:
            notes.append("fused path not timed: " + ("Triton's interpreter on the CPU; interpreter timings are not speedups"
                                                     if not on_gpu else "time_fused=False"))
        if r["eager_ms"]:
            r["eager_gbps"] = case.bytes_moved / (r["eager_ms"] * 1e-3) / 1e9
        r["note"] = "; ".join(notes)
        shown = ", ".join(f"{c[:-3]} {r[c]:.4g} ms" for c in TIME_COLUMNS if r[c] is not None)
        say(f"[{i}/{len(cases)}] {case.name}: ok (max |err| {max(err, err_cl):.3g}); {shown}")
    return results


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def write_results(results: list[dict], out_dir, *, device, settings: dict | None = None,
                  notes: list[str] | None = None, ceilings=None) -> dict[str, str]:
    """Write ``bench.csv``, ``bench.json`` (with the environment and the measured ceilings) and
    ``bench.png`` into ``out_dir``. This JSON is the format of the recorded results in ``results/``
    that :mod:`fused.measure.results` reads.

    It only writes: the copy bandwidth it records is that of ``ceilings`` when given, else the one
    :func:`run_cases` used (each result's ``roofline_gbps``), else None; nothing is measured here.
    """
    os.makedirs(out_dir, exist_ok=True)
    device = torch.device(device)
    env = environment.describe(device)
    paths = {"csv": os.path.join(out_dir, "bench.csv"), "json": os.path.join(out_dir, "bench.json"),
             "chart": os.path.join(out_dir, "bench.png")}
    env_columns = ["gpu", "driver", "torch", "triton", "date"]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + env_columns)
        writer.writeheader()
        for r in results:
            row = {k: ("" if r.get(k) is None else (repr(r[k]) if isinstance(r[k], float) else r[k])) for k in COLUMNS}
            row.update({k: env.get(k) or "" for k in env_columns})
            writer.writerow(row)
    used = next((r["roofline_gbps"] for r in results if r.get("roofline_gbps")), None)
    payload = {
        "families": sorted({r["family"] for r in results}),
        "environment": env,
        "bandwidth_gbps": ceilings.copy_gbps if ceilings is not None else used,
        "ceilings": ceilings.to_dict() if ceilings is not None else None,
        "settings": settings or {},
        "notes": list(notes or []),
        "columns": COLUMNS,
        "rows": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in results],
    }
    with open(paths["json"], "w") as f:
        json.dump(payload, f, indent=2, default=str, allow_nan=False)
        f.write("\n")
    from . import charts  # matplotlib loads only to draw

    charts.bench_chart(results, paths["chart"], env)
    return paths
