"""``facefuse inspect`` (also ``python -m fused inspect``): the command line of :mod:`fused.measure.inspect`.

    facefuse inspect                                   # RetinaFace mobile0.25 640x640 b1 and b16, float16, sm_90a
    facefuse inspect --model all --dtype all           # every default model configuration, 3 dtypes
    facefuse inspect --model arcface --kernel conv2d_bias_act --show sass,ptx
    facefuse inspect --model all --dtype all --out DIR # + inspect.csv, inspect.json, inspect.png
    facefuse inspect --write-baseline                  # regenerate tests/data/inspect_baseline.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .compile import ARTIFACTS, DEFAULT_TARGET, TARGETS
from .dryrun import DEFAULT_CONFIGS, Config

MODEL_CHOICES = ("retinaface", "retinaface-resnet50", "arcface", "arcface-se", "all")
DTYPE_CHOICES = ("float16", "bfloat16", "float32", "all")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=MODEL_CHOICES, default="retinaface",
                   help="retinaface = mobile0.25; arcface = IR-18 without SE; all = every model at its default "
                        "configurations (RetinaFace mobile0.25 640x640 b1 and b16, ResNet-50 640x640 b1, ArcFace "
                        "IR-18 with and without SE 128x128 b64) (default: retinaface)")
    p.add_argument("--size", type=int, default=None, metavar="N",
                   help="input side (default: 640 for RetinaFace, 128 for ArcFace, which takes 128 only)")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="batch size (default: the model's default configurations: 1 for RetinaFace, 64 for ArcFace)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="float16", help="default: float16")
    p.add_argument("--arch", choices=list(TARGETS), default=DEFAULT_TARGET, help=f"target (default: {DEFAULT_TARGET})")
    p.add_argument("--memory-format", choices=["nchw", "channels_last"], default="nchw", help="default: nchw")
    p.add_argument("--precision", choices=["auto", "ieee", "tf32"], default="auto",
                   help="tl.dot precision of float32 models: auto (the default) is what fuse() does on an H100 "
                        "with PyTorch's defaults (TF32, as torch.backends.cudnn.allow_tf32 is on); ieee: exact "
                        "float32 products")
    p.add_argument("--kernel", default=None, metavar="NAME",
                   help="print the compiler's output for one variant: a row id (v03) or a kernel name "
                        "(conv2d_bias_act: its first variant)")
    p.add_argument("--show", default="ptx,sass", metavar="LIST",
                   help=f"with --kernel: which products, comma-separated from {','.join(ARTIFACTS)} (default: ptx,sass)")
    p.add_argument("--out", default=None, metavar="DIR", help="also write inspect.csv, inspect.json and inspect.png")
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="compile processes (default: one per CPU)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="compile cache (default: $FACEFUSE_INSPECT_CACHE or ~/.cache/facefuse/inspect)")
    p.add_argument("--write-baseline", action="store_true",
                   help="inspect every default configuration in float16, bfloat16 and float32 for sm_90a and "
                        "write tests/data/inspect_baseline.json, which the CI check compares against")
    p.add_argument("--check-baseline", action="store_true",
                   help="the same inspection, compared with the recorded baseline: exit 1 on a new spill, a lost "
                        "tensor core or a variant that does not compile")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def configs_from_args(args, parser) -> list[Config]:
    """The configurations the options ask for (a usage error for impossible ones)."""
    dtypes = ("float16", "bfloat16", "float32") if args.dtype == "all" else (args.dtype,)
    models = [c for c in DEFAULT_CONFIGS if args.model in ("all", c["model"])]
    for option, value in (("--size", args.size), ("--batch", args.batch)):
        if value is not None and value < 1:
            parser.error(f"{option}: expected a positive integer, got {value}")
    given = args.size is not None or args.batch is not None
    if args.model != "all" and given:
        first = models[0]
        size = args.size if args.size is not None else first["size"][0]
        if args.model.startswith("arcface") and size != 128:
            parser.error(f"--size: {args.model} takes 128x128 inputs only, got {size}")
        if not args.model.startswith("arcface") and size < 32:
            parser.error(f"--size: RetinaFace needs at least 32, got {size}")
        models = [{"model": args.model, "size": (size, size), "batch": args.batch if args.batch is not None else first["batch"]}]
    elif given:
        parser.error("--size and --batch apply to one model: name it with --model")
    return [Config(m["model"], tuple(m["size"]), m["batch"], d, args.memory_format, args.precision)
            for d in dtypes for m in models]


def run(args, parser) -> int:
    from . import BASELINE_PATH, default_configs, inspect_models
    from .report import compare_with_baseline

    shows = [s for s in args.show.split(",") if s]
    bad = [s for s in shows if s not in ARTIFACTS]
    if bad:
        parser.error(f"--show: unknown {', '.join(bad)}; choose from {', '.join(ARTIFACTS)}")
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs: expected a positive integer")
    baseline_run = args.write_baseline or args.check_baseline
    if baseline_run:
        if args.arch != DEFAULT_TARGET or args.model != "retinaface" or args.dtype != "float16" or args.size is not None \
                or args.batch is not None or args.memory_format != "nchw" or args.precision != "auto":
            parser.error("--write-baseline/--check-baseline inspect the default set (every model, three dtypes, "
                         "sm_90a); leave out --model, --dtype, --arch, --size, --batch, --memory-format, --precision")
        configs = default_configs()
    else:
        configs = configs_from_args(args, parser)
    found = inspect_models(configs, target=args.arch, jobs=args.jobs, cache=args.cache, progress=not args.quiet)
    print(found.table())
    if args.kernel:
        try:
            row = found.row(args.kernel) if args.kernel[:1] == "v" and args.kernel[1:].isdigit() else None
        except KeyError:
            row = None
        if row is None:
            rows = found.find(args.kernel)
            if not rows:
                print(f"facefuse inspect: no variant matches --kernel {args.kernel!r}", file=sys.stderr)
                return 1
            row = rows[0]
        print(f"\n{row.id} {row.label}\nconfig {row.config}; kernel hash {row.hash}; cache key {row.key}")
        if row.error:
            print(row.error)
        else:
            for name in shows:
                print(f"\n===== {name} =====\n{found.artifact(row, name)}")
    if args.out:
        paths = found.save(args.out)
        print(f"\nwrote {', '.join(paths.values())}")
    if args.write_baseline:
        BASELINE_PATH.parent.mkdir(parents=True, exist_ok=True)
        BASELINE_PATH.write_text(json.dumps(found.baseline(), indent=1, sort_keys=True) + "\n")
        print(f"\nwrote the baseline {os.path.relpath(BASELINE_PATH)}")
    if args.check_baseline:
        recorded, notes = json.loads(BASELINE_PATH.read_text()), []
        problems = compare_with_baseline(found.rows, recorded, found.versions, notes)
        made_with = recorded.get("versions") or {}
        print(f"\nthe baseline was made with Triton {made_with.get('triton')} and ptxas {made_with.get('ptxas')}; "
              f"this run: Triton {found.versions.get('triton')} and ptxas {found.versions.get('ptxas')}")
        if notes:
            print(f"{len(notes)} differences of ptxas's scheduling (waits compare under the baseline's compiler only):\n"
                  + "\n".join(notes))
        print("\n".join(problems) if problems else "no regression against the baseline")
        return 1 if problems else 0
    return 0
