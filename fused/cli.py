"""``facefuse`` (also ``python -m fused``): the command line of facefuse.

    facefuse profile                       # RetinaFace mobile0.25, CPU-sized defaults on a CPU
    facefuse profile --model arcface --device cuda --dtype float16 --cuda-graphs --trace trace.json
    facefuse bench --family conv_bn        # on a CUDA GPU
    facefuse ceilings                      # the measured copy bandwidth and matmul throughput
    facefuse results --update-readme       # regenerate the README's results table from results/
    facefuse gpu-check --quick --out DIR   # from a checkout: python -m tools.gpu_check (--dry-run on a CPU)
    facefuse detect photos/ --pretrained --out found --draw   # faces in your photos (fused.apps)
    facefuse embed photos/ --pretrained --out faces           # their ArcFace embeddings and nearest faces
    facefuse inspect --model all           # the code a GPU would run, compiled here: spills, tensor cores, loads

Bad arguments and outputs that cannot be written give a usage message and exit status 2, never a
traceback, before any long work. Each subcommand is one entry of :data:`COMMANDS`. Arguments are
parsed before torch and the kernels load (only the chosen subcommand's parser is built), so
``--help`` and usage errors are quick; the commands themselves live in :mod:`fused.measure` and
:mod:`fused.apps`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .apps import options as app_options
from .measure import choices

PROFILE_DEFAULT_OUT = "facefuse-profile"
BENCH_DEFAULT_OUT = "facefuse-bench"


def _size(text: str):
    try:
        return choices.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_positive = app_options.at_least(1, "positive")
_non_negative = app_options.at_least(0, "non-negative")


def add_profile(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "profile", help=SUMMARIES["profile"],
        description="Profile a model block by block: reference eager time and torch.compile time (median "
                    "after warm-up), FLOPs, bytes moved, arithmetic intensity, achieved GB/s and percent of the "
                    "measured copy bandwidth, peak memory (CUDA); with fused kernels available, the backend that "
                    "ran each block, its error against a float64 reference and, on a CUDA GPU, its time and "
                    "speedups. Writes a table, CSV, JSON, a per-block time chart and a roofline chart into --out. "
                    "On a CPU the fused kernels run in Triton's interpreter for correctness only, and fused "
                    "times and speedups stay empty.",
    )
    p.add_argument("--model", choices=list(choices.MODELS), default="retinaface",
                   help="retinaface = mobile0.25; arcface = IR-18 without SE (default: retinaface)")
    p.add_argument("--size", type=_size, default=None, metavar="HxW|N",
                   help=f"input size (default: {choices.DEFAULT_SIZE['cpu']} on a CPU, {choices.DEFAULT_SIZE['cuda']} "
                        f"on a GPU; ArcFace takes {choices.ARCFACE_SIZE} only)")
    p.add_argument("--batch", type=_positive, default=1, help="batch size (default: 1)")
    p.add_argument("--dtype", choices=list(choices.DTYPE_NAMES), default="float32",
                   help="model and input dtype (default: float32; half precision needs --device cuda)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto = cuda when available, else cpu (default: auto)")
    p.add_argument("--repeats", type=_positive, default=None, help="timed runs per block (default: 10 on CPU, 100 on GPU)")
    p.add_argument("--warmup", type=_non_negative, default=None, help="warm-up runs per block (default: 2 on CPU, 10 on GPU)")
    p.add_argument("--memory-format", choices=list(choices.MEMORY_FORMAT_NAMES), default="nchw",
                   help="layout of the model and input (default: nchw)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="time every path as CUDA graph replays, which removes launch overhead (CUDA only)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile every block and the whole model and time them (default: on; compiling "
                        "takes a minute or two on a small CPU the first time, less once Inductor's cache is "
                        "warm; --no-compile skips it)")
    p.add_argument("--compile-mode", choices=["default", "max-autotune", "reduce-overhead"], default="default",
                   help="torch.compile mode (default: default)")
    p.add_argument("--trace", default=None, metavar="FILE",
                   help="write a torch.profiler Chrome trace of a few forward passes (reference, torch.compile, "
                        "and fused on a GPU) to FILE; open it in chrome://tracing or ui.perfetto.dev")
    p.add_argument("--remeasure", action="store_true",
                   help="measure the machine's ceilings (copy bandwidth, matmul throughput) again instead of "
                        "reading them from the cache")
    p.add_argument("--record", action="store_true",
                   help="also copy the JSON and plots into the project's results/ folder (GPU runs only)")
    p.add_argument("--out", default=PROFILE_DEFAULT_OUT, metavar="DIR", help=f"output folder (default: ./{PROFILE_DEFAULT_OUT})")
    p.add_argument("--no-fused", action="store_true", help="reference columns only: skip fusing and the fused checks")
    p.add_argument("--check-size", type=_size, default=None, metavar="HxW|N",
                   help=f"input size of the fused correctness pass (default: the profiled size on a GPU, "
                        f"{choices.CPU_CHECK_SIZE} on a CPU where the kernels run in Triton's slow interpreter)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the input (default: 0)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="released weights to load (default: seeded initialisation with randomized BatchNorm)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def add_bench(sub) -> argparse.ArgumentParser:
    b = sub.add_parser(
        "bench", help=SUMMARIES["bench"],
        description="For each case of a kernel family: correctness against float64 first, then eager NCHW, "
                    "eager channels_last, torch.compile and the fused kernels timed side by side; speedups, "
                    "GB/s and % of the measured copy bandwidth. Needs a CUDA GPU (--allow-cpu runs the "
                    "correctness checks and the CPU baselines on small shapes, without fused timings).",
    )
    from .measure import benchmark  # its families: registered as torch and the kernels load

    b.add_argument("--family", default="all", choices=[*benchmark.FAMILIES, "all"],
                   help="kernel family (default: all that have fused modules)")
    b.add_argument("--model", choices=["retinaface", "retinaface-resnet50", "all"], default="retinaface",
                   help="the RetinaFace variant(s) the RetinaFace families take their shapes from (default: "
                        "retinaface = mobile0.25; all = both backbones). ArcFace families always use IR-18 at 128x128")
    b.add_argument("--size", type=_positive, default=None, metavar="N", help="RetinaFace input side (default: 640 on GPU, 64 on CPU)")
    b.add_argument("--batch", type=_positive, nargs="+", default=None, metavar="N", help="batch sizes (default: 1 16 on GPU, 1 on CPU)")
    b.add_argument("--dtype", choices=list(choices.DTYPE_NAMES), default=None, help="default: float16 on GPU, float32 on CPU")
    b.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    b.add_argument("--repeats", type=_positive, default=None, help="timed runs (default: 100 on GPU, 10 on CPU)")
    b.add_argument("--warmup", type=_non_negative, default=None, help="warm-up runs (default: 10 on GPU, 2 on CPU)")
    b.add_argument("--compile-mode", choices=["max-autotune", "default", "reduce-overhead", "none"], default=None,
                   help="torch.compile mode of the baseline (default: max-autotune on GPU, default on CPU; none skips it)")
    b.add_argument("--cuda-graphs", action="store_true", help="time eager and fused runs as CUDA graph replays")
    b.add_argument("--fused-compile", action="store_true",
                   help="also torch.compile the fused path (its kernels as torch.ops.facefuse ops), check and time it "
                        "(GPU: the fused_compile_ms column; one more compile per case, in --compile-mode)")
    b.add_argument("--allow-cpu", action="store_true",
                   help="run on a CPU anyway: correctness and baseline timings only (interpreter timings are not speedups)")
    b.add_argument("--out", default=BENCH_DEFAULT_OUT, metavar="DIR", help=f"output folder (default: ./{BENCH_DEFAULT_OUT})")
    b.add_argument("--record", action="store_true",
                   help="also copy the JSON and plot into the project's results/ folder, where lessons and the "
                        "README read recorded GPU figures (GPU runs only)")
    b.add_argument("--remeasure", action="store_true", help="measure the machine's ceilings again (not from the cache)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return b


def add_ceilings(sub) -> argparse.ArgumentParser:
    c = sub.add_parser(
        "ceilings", help=SUMMARIES["ceilings"],
        description="The two roofs of the roofline, measured on this machine: copy bandwidth (GB/s) and "
                    "torch.mm throughput (FLOP/s). Cached in $FACEFUSE_CACHE/ceilings.json (default "
                    "~/.cache/facefuse/ceilings.json), keyed by device name, torch version and dtype.",
    )
    c.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    c.add_argument("--dtype", choices=list(choices.DTYPE_NAMES), default=None,
                   help="matmul dtype (default: float16 on GPU; always float32 on CPU)")
    c.add_argument("--remeasure", action="store_true", help="measure again and overwrite the cached entry")
    return c


def add_results(sub) -> argparse.ArgumentParser:
    r = sub.add_parser(
        "results", help=SUMMARIES["results"],
        description="The README's results table is generated from results/*.json by this command "
                    "(same as python -m fused.measure.results).",
    )
    from .measure import results

    results.add_arguments(r)
    return r


def add_inspect(sub) -> argparse.ArgumentParser:
    from .measure.inspect import command

    i = sub.add_parser("inspect", help=SUMMARIES["inspect"], description=command.__doc__.split("\n\n")[0])
    command.add_arguments(i)
    return i


def run_inspect(args) -> int:
    from .measure.inspect import command

    return command.run(args, args.parser)


def add_detect(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("detect", help=SUMMARIES["detect"], description=app_options.DETECT_DESCRIPTION)
    app_options.add_detect_arguments(p)
    return p


def run_detect(args) -> int:
    from .apps import detect, ray_pipeline

    if (code := ray_pipeline.dispatch(args, "detect")) is not None:  # --engine ray
        return code
    return detect.run_detect(args)


def add_embed(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("embed", help=SUMMARIES["embed"], description=app_options.EMBED_DESCRIPTION)
    app_options.add_embed_arguments(p)
    return p


def run_embed(args) -> int:
    from .apps import embed, ray_pipeline

    if (code := ray_pipeline.dispatch(args, "embed")) is not None:  # --engine ray
        return code
    return embed.run_embed(args)


# --------------------------------------------------------------------------------------------
# gpu-check: the project's GPU verification harness, kept in this one function
# --------------------------------------------------------------------------------------------


def gpu_check_command() -> "Command":
    """``facefuse gpu-check``: a thin delegate to the project's GPU harness, ``python -m
    tools.gpu_check`` (which checks its own arguments, --out and --bundle)."""

    def add(sub) -> argparse.ArgumentParser:
        """``facefuse gpu-check``: a thin delegate to the project's GPU harness, ``python -m tools.gpu_check``.

        The harness is a tool of the project, not of the installed package: it runs the test suite,
        compute-sanitizer and the benchmarks from a checkout. Every argument (``--help`` included) goes
        to it unparsed; outside a checkout the command says where to get one.
        """
        g = sub.add_parser("gpu-check", add_help=False, prefix_chars="\0",
                           help="from a checkout: the GPU harness (python -m tools.gpu_check; --quick is the one-call "
                                "headline check), with a summary of every target",
                           description="Runs python -m tools.gpu_check from the project's checkout with these arguments.")
        g.add_argument("gpu_check_args", nargs=argparse.REMAINDER, help="the harness's arguments (see --help)")
        return g

    def run(args) -> int:
        """Run ``python -m tools.gpu_check`` of the checkout this package was imported from (the
        current folder stays, so relative paths mean the same); exit status 2 outside a checkout."""
        import subprocess
        from pathlib import Path

        import fused

        root = Path(fused.__file__).resolve().parent.parent
        if not (root / "tools" / "gpu_check" / "__init__.py").is_file():
            print("facefuse gpu-check: the GPU harness is a tool of the project's checkout, not of the installed "
                  f"package (no tools/gpu_check beside {root / 'fused'}). Clone the project, then run from its folder: "
                  "pip install --no-deps -e . && python -m tools.gpu_check --quick --out DIR", file=sys.stderr)
            return 2
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        return subprocess.call([sys.executable, "-m", "tools.gpu_check", *args.gpu_check_args], env=env)

    return Command(add, run, torch=False)


# --------------------------------------------------------------------------------------------
# outputs, checked before the work
# --------------------------------------------------------------------------------------------


def check_writable(parser, option: str, path: str, kind: str = "folder") -> Path | None:
    """A usage error (exit 2) unless ``path`` (a ``"folder"`` or a ``"file"``) can be created and
    written: the folder is created now and a probe file written and removed in it, so read-only
    file systems, permissions and a regular file on the way are all found before the work starts.
    Returns the outermost folder it created (None when all existed)."""
    target = Path(path)
    if kind == "folder" and target.exists() and not target.is_dir():
        parser.error(f"{option} {path}: exists and is not a folder; give a folder name")
    if kind == "file" and (target.is_dir() or path.endswith(("/", os.sep))):
        parser.error(f"{option} {path}: is a folder; give a file name such as trace.json")
    folder = target if kind == "folder" else target.parent
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if os.path.lexists(existing) and not existing.is_dir():
        parser.error(f"{option} {path}: {existing} is a file, not a folder")
    created = None
    if not folder.exists():
        created = folder
        while not created.parent.exists() and created.parent != created:
            created = created.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        parser.error(f"{option} {path}: cannot write there ({exc.strerror or exc})")
    return created


def check_outputs(args, command: "Command") -> list[Path]:
    """:func:`check_writable` for every output option of ``command`` given (or defaulted) in ``args``;
    the folders it created."""
    created = []
    for dest, kind in command.outputs:
        value = getattr(args, dest, None)
        if value is not None:
            created.append(check_writable(args.parser, "--" + dest.replace("_", "-"), value, kind))
    return [c for c in created if c is not None]


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (and the folders in them) that are still empty: a command that stops at a
    usage error leaves no empty output folder behind."""
    for top in folders:
        for below in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                below.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _ceilings(args, device, dtype, say):
    """The machine's ceilings, from the cache or measured now; never fatal."""
    from .measure import ceilings

    try:
        found = ceilings.measure(device, dtype, remeasure=args.remeasure)
    except Exception as exc:  # a roofline without a roof is still a profile
        if say:
            say(f"could not measure the machine's ceilings ({type(exc).__name__}: {exc}); no roofline columns")
        return False
    if say:
        say(f"ceilings: {found}" + ("" if found.source != "measured" else f" (measured now, saved to {ceilings.cache_path()})"))
    return found


def _progress(args):
    if args.quiet:
        return None
    return lambda line: print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# profile
# --------------------------------------------------------------------------------------------


def _device(args):
    """The device ``--device`` names, or a usage error (exit 2) saying why it is not available."""
    from .measure import models

    try:
        return models.resolve_device(args.device)
    except ValueError as exc:
        args.parser.error(str(exc))


def run_profile(args) -> int:
    from .measure import models, timing
    from .measure.models import profile_options

    parser = args.parser
    try:  # the checks profile() makes, made first so that a bad option is a usage error
        opts = profile_options(args.model, size=args.size, batch=args.batch, dtype=args.dtype, device=args.device,
                               warmup=args.warmup, repeats=args.repeats, fused=not args.no_fused,
                               check_size=args.check_size, memory_format=args.memory_format,
                               cuda_graphs=args.cuda_graphs, weights=args.weights)
    except ValueError as exc:
        parser.error(str(exc))
    device, dtype = opts.device, opts.dtype
    if args.record and device.type != "cuda":
        parser.error("--record keeps GPU results only; a CPU profile has no fused timings to record")
    if args.weights is not None:
        try:  # load once here so a mismatch is a usage error, not a traceback
            models.build_model(args.model, seed=args.seed, weights=args.weights)
        except Exception as exc:  # WeightsMismatchError, unpickling errors, ...
            lines = [line if len(line) <= 240 else line[:237] + "..." for line in str(exc).splitlines()[:8]]
            parser.error(f"--weights {args.weights}: " + "\n".join(lines))

    say = _progress(args)
    if say:
        on_gpu = device.type == "cuda"
        shape = "x".join(map(str, models.input_shape(args.model, opts.size, args.batch)))
        say(f"facefuse profile: {args.model} {shape} {args.dtype} on {device.type}"
            + ("" if args.weights else " (seeded initialisation with randomized BatchNorm, not trained weights)"))
        if not args.no_fused and not on_gpu:
            say("fused kernels run once per block in Triton's interpreter, for correctness only "
                "(interpreter timings are not speedups)")
            if args.model.startswith("arcface"):
                say("ArcFace takes 128x128 only, so the interpreter pass runs at full size: expect a minute "
                    "or more on a small CPU (--no-fused skips it)")
        if args.compile and not on_gpu:
            say("torch.compile compiles every block with Inductor's C++ backend: a minute or two on a small CPU "
                "the first time (Inductor caches its work, so reruns are faster); --no-compile skips it")
    from .measure.profiler import profile

    threads = timing.cpu_threads() if device.type == "cpu" else None  # fixed for the ceilings and every row
    with timing.torch_threads(threads):
        result = profile(
            args.model, size=opts.size, batch=args.batch, dtype=dtype, device=device, warmup=args.warmup,
            repeats=args.repeats, fused=not args.no_fused, seed=args.seed, weights=args.weights,
            check_size=args.check_size, progress=say, compile=args.compile, compile_mode=args.compile_mode,
            memory_format=args.memory_format, cuda_graphs=args.cuda_graphs,
            ceilings=_ceilings(args, device, dtype, say), trace=args.trace, threads=threads,
        )
    paths = result.save(args.out)
    print(result.table())
    if result.fuse_report:
        print()
        print(result.fuse_report)
    print()
    print(f"wrote {args.out}{os.sep}: " + ", ".join(os.path.basename(p) for p in paths.values()))
    if args.trace:
        paths["trace"] = args.trace  # where --trace said, not in --out
    for kind, path in paths.items():
        print(f"  {kind:8s} {path}")
    if args.record:
        from .measure import results

        recorded = results.record(paths["json"], {".png": paths["chart"], "-roofline.png": paths.get("roofline")})
        print("recorded " + ", ".join(recorded) + "\nnow run `python -m fused.measure.results --update-readme`")
    return 0


# --------------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------------


def run_bench(args) -> int:
    import torch

    from .measure import benchmark, timing
    from .measure.models import DTYPES

    parser = args.parser
    device = _device(args)
    on_gpu = device.type == "cuda"
    if not on_gpu and not args.allow_cpu:
        parser.error(
            "facefuse bench times GPU kernels and needs a CUDA device. Here the Triton kernels run in "
            "the interpreter, whose timings are not speedups. Pass --allow-cpu to run the correctness "
            "checks and the eager/torch.compile CPU timings on small shapes anyway (no fused timings)."
        )
    available = benchmark.families()
    wanted = available if args.family == "all" else [args.family]
    missing = [f for f in wanted if f not in available]
    if missing:
        parser.error(f"--family {args.family}: its block types have no fused module in fused.REGISTRY")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if on_gpu else torch.float32)
    if not on_gpu and dtype != torch.float32:
        parser.error(f"--dtype {args.dtype} on the CPU: use float32 there")
    size = args.size or (640 if on_gpu else 64)
    if size < 32:
        parser.error(f"--size: RetinaFace needs at least 32, got {size}")
    batches = tuple(args.batch) if args.batch else ((1, 16) if on_gpu else (1,))
    warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 2)
    repeats = args.repeats or (100 if on_gpu else 10)
    compile_mode = args.compile_mode or ("max-autotune" if on_gpu else "default")
    if args.cuda_graphs and not on_gpu:
        parser.error("--cuda-graphs needs a CUDA device")
    if args.record and not on_gpu:
        parser.error("--record keeps GPU results only; CPU runs have no fused timings to record")

    say = _progress(args)
    retinaface = ("retinaface", "retinaface-resnet50") if args.model == "all" else (args.model,)
    ceil = _ceilings(args, device, dtype, say)
    cases = []
    for family in wanted:
        cases += benchmark.family_cases(family, retinaface=retinaface, size=size, batches=batches, dtype=dtype,
                                        device=device, seed=args.seed)
    if say:
        say(f"facefuse bench: {len(cases)} cases ({', '.join(wanted)}), {str(dtype).replace('torch.', '')} on {device.type}")
        if not on_gpu:
            say("CPU: correctness in Triton's interpreter and CPU baselines only; fused timings are left "
                "empty (interpreter timings are not speedups)")
    threads = timing.cpu_threads() if not on_gpu else None  # one thread count for every case
    with timing.torch_threads(threads):
        results = benchmark.run_cases(
            cases, device, warmup=warmup, repeats=repeats, cuda_graphs=args.cuda_graphs,
            compile_mode=None if compile_mode == "none" else compile_mode, progress=say, ceilings=ceil or None,
            fused_compile=args.fused_compile,
        )
    notes = []
    if not on_gpu:
        notes.append("run on a CPU with --allow-cpu: the fused kernels ran in Triton's interpreter for "
                     "correctness only; interpreter timings are not speedups, so fused times are empty")
    settings = {"families": wanted, "model": args.model, "size": size, "batches": list(batches),
                "dtype": str(dtype).replace("torch.", ""), "warmup": warmup, "repeats": repeats,
                "compile_mode": compile_mode, "cuda_graphs": args.cuda_graphs, "seed": args.seed,
                "torch_threads": threads, "fused_compile": args.fused_compile}
    paths = benchmark.write_results(results, args.out, device=device, settings=settings, notes=notes,
                                    ceilings=ceil or None)
    print(format_results(results))
    for n in notes:
        print(f"note: {n}")
    print(f"\nwrote {args.out}{os.sep}: " + ", ".join(os.path.basename(p) for p in paths.values()))
    if args.record:
        print(f"recorded {record_results(paths['json'], paths['chart'])}\n"
              "now run `python -m fused.measure.results --update-readme`")
    failed = [r for r in results if r["status"] == "failed"]
    return 1 if failed else 0


def record_results(json_path, chart_path=None) -> str:
    """Copy a benchmark JSON (and its plot) into ``results/`` as ``<families>-<gpu>-<date>.json``
    (and ``.png``); return the JSON's new path."""
    from .measure import results

    return results.record(json_path, {".png": chart_path} if chart_path else None)[0]


# --------------------------------------------------------------------------------------------
# ceilings, results
# --------------------------------------------------------------------------------------------


def run_ceilings(args) -> int:
    from .measure import ceilings
    from .measure.models import DTYPES

    device = _device(args)
    dtype = DTYPES[args.dtype] if args.dtype else None
    found = ceilings.measure(device, dtype, remeasure=args.remeasure)
    print(found)
    print(f"cache: {ceilings.cache_path()} (key {ceilings.cache_key(device, dtype if device.type == 'cuda' else None)!r})")
    return 0


def run_results(args) -> int:
    from .measure import results

    try:
        return results.run(args)
    except (OSError, ValueError) as exc:
        args.parser.error(str(exc))


def format_results(results: list[dict]) -> str:
    """The benchmark results as an aligned table."""
    header = ["case", "status", "max |err|", "eager ms", "eager_cl ms", "compile ms", "fused ms", "fused_cl ms",
              "fused+compile ms", "x eager", "x eager_cl", "x compile", "GB/s", "% roofline"]

    def f(v, spec):
        return "" if v is None else format(v, spec)

    lines = [[r["case"], r["status"] or "", f(r["max_abs_error"], ".2g"), f(r["eager_ms"], ".4g"), f(r["eager_cl_ms"], ".4g"),
              f(r["compile_ms"], ".4g"), f(r["fused_ms"], ".4g"), f(r["fused_cl_ms"], ".4g"),
              f(r.get("fused_compile_ms"), ".4g"), f(r["speedup_eager"], ".2f"), f(r["speedup_eager_cl"], ".2f"), f(r["speedup_compile"], ".2f"),
              f(r["fused_gbps"], ".0f"), f(r["roofline_pct"], ".0f")] for r in results]
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(header)]

    def render(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [render(header), render(["-" * w for w in widths])] + [render(c) for c in lines]
    errors = [f"  {r['case']}: {r['error']}" for r in results if r.get("error")]
    errors += [f"  {r['case']}: torch.compile failed: {r['compile_error']}" for r in results if r.get("compile_error")]
    errors += [f"  {r['case']}: fused + torch.compile failed: {r['fused_compile_error']}" for r in results
               if r.get("fused_compile_error")]
    if errors:
        out += ["", "problems:"] + errors
    return "\n".join(out)


# --------------------------------------------------------------------------------------------

#: name → one line about it: ``facefuse --help`` lists these without building the subcommands' parsers.
SUMMARIES = {
    "profile": "time, FLOPs and bytes of every block of a model; fused correctness per block",
    "bench": "benchmark fused kernels against eager PyTorch and torch.compile (CUDA)",
    "ceilings": "measure (or show the cached) copy bandwidth and matmul throughput of this machine",
    "results": "print the recorded GPU results as markdown, or regenerate the README's table",
    "gpu-check": "from a checkout: the GPU harness (python -m tools.gpu_check; --quick is the one-call "
                 "headline check), with a summary of every target",
    "detect": "detect faces in images and folders: JSON records, annotated images, fused vs unfused timing",
    "embed": "embed the detected faces with ArcFace: embeddings, nearest faces by cosine similarity, timing",
    "inspect": "compile the kernels of a model for a GPU on any machine: registers, spills, tensor cores, loads, "
               "occupancy per variant",
}


@dataclass(frozen=True)
class Command:
    """One subcommand: ``add(subparsers) -> parser``, ``run(args) -> exit status``, its output options
    as ``(dest, "folder" | "file")`` (checked before it runs), and whether it needs torch."""

    add: object
    run: object
    outputs: tuple = ()
    torch: bool = True
    #: ``check(args)``: usage errors found without torch, made before the outputs are checked.
    check: object = None


COMMANDS = {
    "profile": Command(add_profile, run_profile, (("out", "folder"), ("trace", "file"))),
    "bench": Command(add_bench, run_bench, (("out", "folder"),)),
    "ceilings": Command(add_ceilings, run_ceilings),
    "results": Command(add_results, run_results, torch=False),
    "gpu-check": gpu_check_command(),
    "detect": Command(add_detect, run_detect, (("out", "folder"),), check=app_options.check_paths),
    "embed": Command(add_embed, run_embed, (("out", "folder"),), check=app_options.check_paths),
    "inspect": Command(add_inspect, run_inspect, (("out", "folder"),)),
}


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The parser of ``facefuse``. Given ``argv``, only the subcommand it names gets its full parser
    (the others are listed with their summary), so that parsing loads no more than that command's
    options; without, every subcommand is built."""
    parser = argparse.ArgumentParser(
        prog="facefuse",
        description="Learn GPU kernel fusion on face models: profile RetinaFace/ArcFace block by block, "
                    "benchmark the fused Triton kernels against eager PyTorch and torch.compile, or run the "
                    "fused detector and ArcFace on your own photos (detect, embed).",
        epilog="exit status: 0 done, 1 some inputs or cases failed (the rest is written), 2 bad arguments or "
               "outputs that cannot be written, 3 a download failed (--pretrained), 130 interrupted",
    )
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    sub.required = True
    chosen = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for name, command in COMMANDS.items():
        if argv is None or name == chosen:
            built = command.add(sub)
            built.set_defaults(func=command.run, parser=built)
        else:
            sub.add_parser(name, help=SUMMARIES[name])
    return parser


def main(argv=None) -> int:
    """Entry point of ``facefuse`` and ``python -m fused``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    created = []
    try:
        parser = build_parser(argv)
        args, extra = parser.parse_known_args(argv)
        if extra:  # with the subcommand's usage, not the top level's
            getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
        command = COMMANDS[args.command]
        if command.check is not None:
            command.check(args)
        created = check_outputs(args, command)
        if command.torch:
            import fused

            fused.import_all()  # the kernels and fused modules, once the arguments are known to be good
        return args.func(args)
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        code = exc.code
        code = code if isinstance(code, int) else (0 if code is None else 2)
        if code == 2:
            remove_empty(created)
        return code
    except KeyboardInterrupt:
        print("facefuse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
