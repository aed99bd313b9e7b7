"""The GPU benchmark every kernel family shares: correctness first, then every baseline side by side.

    from fused import benchmark
    cases = benchmark.conv_bn_cases(size=640, batches=(1, 16), dtype=torch.float16, device="cuda")
    results = benchmark.run_cases(cases, "cuda")
    benchmark.write_results(results, "facefuse-bench", device="cuda")

For every :class:`BenchCase`, :func:`run_cases`

1. checks the fused path against a float64 run of the reference with
   :func:`fused.tolerance.assert_close`, in NCHW and in channels_last; a case that fails (or whose
   fused module fell back to the reference forward) is recorded as such and **not timed**;
2. times, in one run and on one input: eager PyTorch (NCHW), eager PyTorch channels_last,
   ``torch.compile(mode="max-autotune")`` of the eager reference (a compile failure is recorded,
   not raised), and the fused path on NCHW and on channels_last input, each with
   :func:`fused.timing.time_callable` (warm-up, median; optionally CUDA graphs);
3. reports each time, the speedup of the best fused layout over each baseline, the bytes the case
   must move, the achieved GB/s and the percentage of the machine's measured copy bandwidth
   (:func:`measure_bandwidth`, the memory roofline).

Results go to CSV and JSON with :func:`fused.environment.describe` (GPU, driver, versions, date)
and a PNG of the speedups. On a CPU the fused kernels run in Triton's interpreter: its timings
are not speedups, so fused times stay empty there (correctness and baselines still run).

A kernel family adds itself with one small function that returns cases, registered in
:data:`FAMILIES`; :func:`block_cases` does the work for any block type that :func:`fused.fuse`
can swap.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

import reference

from . import environment, timing
from . import profile as _profile
from .profile import leaf_flops, reduction_length, state_bytes
from .tolerance import assert_close, max_error

# --------------------------------------------------------------------------------------------
# Memory roofline
# --------------------------------------------------------------------------------------------

_BANDWIDTH: dict[str, float] = {}


def measure_bandwidth(device, *, nbytes: int | None = None, repeats: int = 20) -> float:
    """Copy bandwidth of ``device`` in GB/s (bytes read + written per second / 1e9), cached per process.

    A ``dst.copy_(src)`` of a large buffer (512 MiB on a GPU, 64 MiB on a CPU) timed with
    :func:`fused.timing.time_callable`; what a memory-bound kernel can hope to reach.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = f"{device}:{nbytes}"
    if key not in _BANDWIDTH:
        if nbytes is None:
            nbytes = (512 if device.type == "cuda" else 64) * 2**20
        n = max(nbytes // 4, 1)
        src = torch.ones(n, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        t = timing.time_callable(lambda: dst.copy_(src), device, warmup=3, repeats=repeats)
        _BANDWIDTH[key] = 2 * n * 4 / (t.median_ms * 1e-3) / 1e9
        del src, dst
    return _BANDWIDTH[key]


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
    x: torch.Tensor
    bytes_moved: int
    flops: int
    reduction_length: int
    reference64_fn: Callable | None = None
    info: dict = field(default_factory=dict)


def _float64_reference(case: BenchCase):
    if case.reference64_fn is not None:
        return case.reference64_fn(case.x.double())
    if isinstance(case.reference_fn, nn.Module):
        return copy.deepcopy(case.reference_fn).double()(case.x.double())
    return case.reference_fn(case.x.double())


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def block_cases(
    family: str,
    model: nn.Module,
    block_types,
    example_input: torch.Tensor,
    *,
    batches=(1,),
    seed: int = 0,
) -> list[BenchCase]:
    """One case per distinct (block type, input shape, weight shapes) among ``model``'s blocks of
    ``block_types``, for each batch size. Input shapes are recorded by hooks during one forward
    pass of ``model`` on ``example_input`` (batch 1 is enough: other batches change N only).

    The fused module is :func:`fused.fuse` of a copy of the block; the reference is the block.
    """
    fuse = _fuse()
    if fuse is None:
        return []
    model = model.eval()
    wanted = set(block_types)
    found: dict[tuple, tuple[str, nn.Module, str, tuple]] = {}
    handles = []

    def hook(path, module, kind):
        def pre(mod, args):
            x = args[0]
            weights = tuple(tuple(p.shape) for p in module.parameters())
            strides = tuple(m.stride for m in module.modules() if isinstance(m, nn.Conv2d))
            key = (kind, tuple(x.shape[1:]), weights, strides)
            found.setdefault(key, (path, module, kind, tuple(x.shape[1:])))
        return pre

    for path, module in model.named_modules():
        kind = reference.block_type(module)
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
    for (kind, chw, _, _), (path, block, _, _) in found.items():
        fused_block = fuse(copy.deepcopy(block))
        for batch in batches:
            x = torch.randn((batch, *chw), generator=g).to(device=example_input.device, dtype=example_input.dtype)
            flops, out_bytes = _count(block, x)
            convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
            desc = (f"{convs[0].in_channels}->{convs[-1].out_channels} k{convs[0].kernel_size[0]} s{max(c.stride[0] for c in convs)}"
                    if convs else "")
            cases.append(BenchCase(
                name=f"{kind} {desc} {'x'.join(map(str, x.shape))}".replace("  ", " "),
                family=family,
                shape="x".join(map(str, x.shape)),
                fused_fn=fused_block,
                reference_fn=block,
                x=x,
                bytes_moved=x.numel() * x.element_size() + out_bytes + state_bytes(block),
                flops=flops,
                reduction_length=reduction_length(block),
                info={"block_type": kind, "example_path": path, "batch": batch},
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
    return total[0], out.numel() * out.element_size()


def _fuse():
    from .profile import fuse_function

    return fuse_function()


def _registered(block_types) -> bool:
    import fused as pkg

    registry = getattr(pkg, "REGISTRY", {})
    return all(t in registry for t in block_types)


CONV_BN_TYPES = ("conv_bn", "conv_bn_no_relu", "conv_bn1X1")


def _retinaface_input(model_name: str, size: int, dtype, device, seed: int):
    net = reference.randomize_batchnorm(reference.retinaface(model_name, seed=seed), seed=seed)
    net = net.to(device=device, dtype=dtype)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)
    return net, x


def conv_bn_cases(model_name: str = "mobile0.25", size: int = 640, batches=(1, 16), dtype=torch.float16,
                  device="cuda", seed: int = 0) -> list[BenchCase]:
    """RetinaFace's conv → BN → activation blocks (conv_bn, conv_bn_no_relu, conv_bn1X1) at ``size``."""
    net, x = _retinaface_input(model_name, size, dtype, device, seed)
    return block_cases("conv_bn", net, CONV_BN_TYPES, x, batches=batches, seed=seed)


def conv_dw_cases(model_name: str = "mobile0.25", size: int = 640, batches=(1, 16), dtype=torch.float16,
                  device="cuda", seed: int = 0) -> list[BenchCase]:
    """MobileNetV1's depthwise-separable blocks (conv_dw) of RetinaFace mobile0.25 at ``size``
    (``model_name`` is ignored: only the mobile0.25 backbone has conv_dw blocks)."""
    net, x = _retinaface_input("mobile0.25", size, dtype, device, seed)
    return block_cases("conv_dw", net, ("conv_dw",), x, batches=batches, seed=seed)


def squeeze_excite_cases(model_name: str = "arcface-se", size: int = 128, batches=(1, 64), dtype=torch.float16,
                         device="cuda", seed: int = 0) -> list[BenchCase]:
    """The SEBlocks of ResNetArcFace IR-18 with squeeze-excite (input 128x128; ``model_name`` and
    ``size`` are ignored)."""
    net = reference.randomize_batchnorm(reference.arcface(use_se=True, seed=seed), seed=seed).to(device=device, dtype=dtype)
    x = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)
    return block_cases("squeeze_excite", net, ("SEBlock",), x, batches=batches, seed=seed)


def irblock_cases(model_name: str = "arcface", size: int = 128, batches=(1, 64), dtype=torch.float16,
                  device="cuda", seed: int = 0) -> list[BenchCase]:
    """The IRBlocks of ResNetArcFace IR-18, with and without squeeze-excite (input 128x128;
    ``model_name`` and ``size`` are ignored)."""
    cases = []
    for use_se in (False, True):
        net = reference.randomize_batchnorm(reference.arcface(use_se=use_se, seed=seed), seed=seed).to(device=device, dtype=dtype)
        x = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)
        cases += block_cases("irblock" + ("_se" if use_se else ""), net, ("IRBlock",), x, batches=batches, seed=seed)
    return cases


#: family → (case builder, the block types whose fused modules it needs). A family whose fused
#: modules are not registered in ``fused.REGISTRY`` is left out by :func:`families`.
FAMILIES: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "conv_bn": (conv_bn_cases, CONV_BN_TYPES),
    "conv_dw": (conv_dw_cases, ("conv_dw",)),
    "squeeze_excite": (squeeze_excite_cases, ("SEBlock",)),
    "irblock": (irblock_cases, ("IRBlock",)),
}


def families() -> list[str]:
    """The families whose fused modules exist in this checkout."""
    if _fuse() is None:
        return []
    return [name for name, (_, types) in FAMILIES.items() if _registered(types)]


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

TIME_COLUMNS = ("eager_ms", "eager_cl_ms", "compile_ms", "fused_ms", "fused_cl_ms")
BASELINES = {"eager": "eager_ms", "eager_cl": "eager_cl_ms", "compile": "compile_ms"}
COLUMNS = [
    "case", "family", "shape", "dtype", "device", "status", "max_abs_error", "max_abs_error_cl", "kernels",
    "error", "bytes_moved", "flops", "reduction_length", *TIME_COLUMNS, "timing_method",
    "speedup_eager", "speedup_eager_cl", "speedup_compile", "fused_best_layout",
    "fused_gbps", "roofline_gbps", "roofline_pct", "eager_gbps", "eager_kernels", "eager_cl_kernels",
    "compile_error", "note",
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


def _enabled(flag: bool):
    import fused as pkg

    if hasattr(pkg, "enabled"):
        return pkg.enabled(flag)
    import contextlib

    return contextlib.nullcontext()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _check(case: BenchCase, x: torch.Tensor, expected) -> tuple[float, str | None, list[str], list[str]]:
    """Run the fused path on ``x``: (max error, failure message or None, kernels, fallbacks)."""
    import fused as pkg

    with torch.no_grad(), _enabled(True), pkg.recording() as rec:
        actual = case.fused_fn(x)
    err = max_error(actual, expected) if actual.shape == expected.shape else math.inf
    try:
        assert_close(actual, expected, reduction_length=case.reduction_length, what=case.name)
        message = None
    except AssertionError as exc:
        message = str(exc).splitlines()[0]
    fallbacks = [f"{block or '?'}: {reason}" for block, reason in rec.fallbacks()]
    return err, message, sorted(rec.kernels()), fallbacks


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
) -> list[dict]:
    """Check, then time every case (see the module docstring); one result dict per case.

    ``compile_mode=None`` skips ``torch.compile``. ``time_fused`` defaults to True exactly when the
    kernels are compiled for a GPU; it is forced off in Triton's interpreter (its timings are not
    speedups).
    """
    say = progress or (lambda line: None)
    device = torch.device(device)
    on_gpu = _profile.times_fused(device)
    time_fused = on_gpu if time_fused is None else (time_fused and on_gpu)
    bandwidth = measure_bandwidth(device)
    results = []
    for i, case in enumerate(cases, 1):
        r = {c: None for c in COLUMNS}
        r.update(case=case.name, family=case.family, shape=case.shape, dtype=str(case.x.dtype).replace("torch.", ""),
                 device=device.type, bytes_moved=case.bytes_moved, flops=case.flops,
                 reduction_length=case.reduction_length, roofline_gbps=bandwidth)
        results.append(r)
        x = case.x.to(device)
        x_cl = _channels_last(x)
        # 1. correctness first, in both layouts
        try:
            with torch.no_grad():
                expected = _float64_reference(case)
            err, message, kernels, fallbacks = _check(case, x, expected)
            err_cl, message_cl, kernels_cl, fallbacks_cl = _check(case, x_cl, expected)
        except Exception as exc:  # a crashing kernel is a failed case, not a crashed benchmark
            r.update(status="failed", error=_first_line(exc))
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
                notes.append(f"{column[:-3]} not timed: {_first_line(exc)}")
                return
            r[column] = t.median_ms
            r["timing_method"] = r["timing_method"] or t.method

        ref = case.reference_fn
        ref_cl = copy.deepcopy(ref).to(memory_format=torch.channels_last) if isinstance(ref, nn.Module) else ref
        with _enabled(False):
            timed("eager_ms", lambda: ref(x))
            timed("eager_cl_ms", lambda: ref_cl(x_cl))
            try:  # which kernels eager PyTorch chose in each layout (they differ for depthwise)
                r["eager_kernels"] = eager_gpu_kernels(lambda: ref(x), device)
                r["eager_cl_kernels"] = eager_gpu_kernels(lambda: ref_cl(x_cl), device)
            except Exception as exc:
                notes.append(f"eager kernels not recorded: {_first_line(exc)}")
        if compile_mode:
            try:
                torch._dynamo.reset()  # a fresh cache per case: no recompile limit, no stale guards
                compiled = torch.compile(copy.deepcopy(ref) if isinstance(ref, nn.Module) else ref, mode=compile_mode)
                with torch.no_grad(), _enabled(False):
                    compiled(x)  # compile (and autotune) outside the timing
            except Exception as exc:
                r["compile_error"] = _first_line(exc)
                notes.append("torch.compile failed")
            else:
                # max-autotune and reduce-overhead capture their own CUDA graphs: do not nest ours
                timed("compile_ms", lambda: compiled(x), graph=cuda_graphs and compile_mode == "default")
                if cuda_graphs and compile_mode != "default":
                    notes.append(f"compile timed with CUDA events (mode {compile_mode} uses its own CUDA graphs)")
        if time_fused:
            with _enabled(True):
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
                  notes: list[str] | None = None) -> dict[str, str]:
    """Write ``bench.csv``, ``bench.json`` (with the environment) and ``bench.png`` into ``out_dir``."""
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
    payload = {
        "families": sorted({r["family"] for r in results}),
        "environment": env,
        "bandwidth_gbps": measure_bandwidth(device),
        "settings": settings or {},
        "notes": list(notes or []),
        "columns": COLUMNS,
        "rows": results,
    }
    with open(paths["json"], "w") as f:
        json.dump(payload, f, indent=2, default=str, allow_nan=True)
        f.write("\n")
    _plot(results, paths["chart"], env)
    return paths


def _plot(results: list[dict], path: str, env: dict) -> None:
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. a notebook's) is left alone

    timed = [r for r in results if r.get("status") == "ok"]
    has_speedups = any(r.get("speedup_eager") is not None for r in timed)
    fig = Figure(figsize=(max(6.0, 0.6 * len(timed) + 2), 4.5))
    ax = fig.subplots()
    xs = list(range(len(timed)))
    if has_speedups:
        keys = [("speedup_eager", "vs eager NCHW"), ("speedup_eager_cl", "vs eager channels_last"),
                ("speedup_compile", "vs torch.compile")]
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_ylabel("speedup of the fused kernel (x)")
    else:
        keys = [("eager_ms", "eager NCHW"), ("eager_cl_ms", "eager channels_last"), ("compile_ms", "torch.compile")]
        ax.set_ylabel("median time (ms)")
    w = 0.8 / len(keys)
    for j, (key, label) in enumerate(keys):
        ax.bar([x + (j - (len(keys) - 1) / 2) * w for x in xs], [r.get(key) or 0.0 for r in timed], width=w, label=label)
    ax.set_xticks(xs)
    ax.set_xticklabels([r["case"] for r in timed], rotation=60, ha="right", fontsize=6)
    where = env.get("gpu") or env.get("cpu") or env.get("device")
    title = f"facefuse bench on {where}"
    if not has_speedups:
        title += " (no fused timings: interpreter timings are not speedups)"
    ax.set_title(title, fontsize=9)
    if timed:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
