"""Every kernel family once, on small CUDA inputs: the program ``compute-sanitizer`` watches.

    compute-sanitizer --tool memcheck python -m tools.sanitize_run --out memcheck.json
    python -m tools.sanitize_run --check     # every family has its fused modules here (no GPU)

For each family of ``facefuse bench`` it builds the benchmark's cases
(:func:`fused.measure.benchmark.family_cases`) at a small size (RetinaFace 64x64, both backbones;
ArcFace 128x128, its only size) and batch 2, and runs the fused path once on NCHW and once on
channels_last input, recording which Triton kernels launched. Correctness is the tests' and the
benchmark's job; this run exists so that every kernel configuration the models use executes
under the sanitizer. Progress markers (``[sanitize] begin FAMILY``) let the harness attribute
sanitizer reports to a family.

The families are the benchmark's (:data:`fused.measure.benchmark.FAMILIES`), and each
``register_family`` line says why its family also goes under racecheck (``racecheck=``;
:func:`racecheck_reasons` lists them; the kernels that ran are in the ``--out`` JSON). racecheck
checks shared-memory hazards only, and every family but one has some: each launches a kernel
with ``tl.dot``, whose operand tiles Triton stages through shared memory, or (the squeeze-excite
kernels) reduces across warps with ``tl.sum``, which also goes through shared memory. The
exception, ``depthwise`` (the depthwise kernel alone), goes under racecheck anyway: Triton may
convert register layouts through shared memory. No kernel uses atomics (``se_squeeze`` sums its
partial means in a second launch instead), so there is no global-memory race for racecheck to
miss; memcheck covers out-of-bounds accesses.
"""

from __future__ import annotations

import argparse
import json
import sys

RETINAFACE_SIZE = 64
BATCH = 2


def benchmark_module():
    """The benchmark module (imported when needed: ``--check`` must not need CUDA)."""
    from fused.measure import benchmark

    return benchmark


def racecheck_reasons() -> dict[str, str]:
    """family → why it also goes under racecheck, for every family of the benchmark, in its order."""
    return {name: family.racecheck for name, family in benchmark_module().FAMILIES.items()}


def check() -> list[str]:
    """Problems that would keep a family from running here (empty when there are none): a family
    whose block types have no fused module in this checkout, or without a racecheck reason."""
    benchmark = benchmark_module()
    problems = []
    registered, available = set(benchmark.FAMILIES), set(benchmark.families())
    if registered - available:
        problems.append(f"benchmark families without fused modules in this checkout: {', '.join(sorted(registered - available))}")
    unexplained = sorted(name for name, why in racecheck_reasons().items() if not why)
    if unexplained:
        problems.append(f"families without a racecheck reason (register_family(..., racecheck=...)): {', '.join(unexplained)}")
    return problems


def _channels_last(x):
    import torch

    if isinstance(x, (list, tuple)):
        return type(x)(_channels_last(t) for t in x)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def run_family(family: str, *, dtype, device="cuda", say=print) -> dict:
    """Run the fused path of every small case of ``family`` on ``device``, NCHW then channels_last."""
    import torch

    import fused

    benchmark = benchmark_module()
    say(f"[sanitize] begin {family}")
    cases = benchmark.family_cases(family, retinaface=("retinaface", "retinaface-resnet50"), size=RETINAFACE_SIZE,
                                   batches=(BATCH,), dtype=dtype, device=device)
    kernels, fallbacks = set(), []
    for case in cases:
        for x in (case.x, _channels_last(case.x)):
            with torch.inference_mode(), fused.recording() as rec:
                case.fused_fn(x)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()  # a faulting kernel reports here, inside its family
            kernels |= rec.kernels()
            fallbacks += [f"{case.name}: {block or '?'}: {reason}" for block, reason in rec.fallbacks()]
    say(f"[sanitize] end {family}: {len(cases)} cases, kernels {', '.join(sorted(kernels)) or 'none'}"
        + (f", {len(fallbacks)} fallbacks" if fallbacks else ""))
    return {"cases": len(cases), "kernels": sorted(kernels), "fallbacks": fallbacks}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sanitize_run",
                                     description="Run every kernel family once on small CUDA inputs (for compute-sanitizer).")
    families = racecheck_reasons()
    parser.add_argument("--families", nargs="+", default=None, choices=list(families), help="default: all")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16")
    parser.add_argument("--out", default=None, metavar="FILE", help="write what ran (JSON) to FILE")
    parser.add_argument("--check", action="store_true",
                        help="only check that every family can run in this checkout (no GPU needed)")
    parser.add_argument("--list", action="store_true", help="print the families and why each goes under racecheck")
    args = parser.parse_args(argv)
    if args.list:
        for name, why in families.items():
            print(f"{name}: racecheck because {why}")
        return 0
    if args.check:
        problems = check()
        for p in problems:
            print(f"sanitize_run: {p}", file=sys.stderr)
        print("sanitize_run: every family can run here" if not problems else "sanitize_run: PROBLEMS")
        return 1 if problems else 0

    import torch

    from fused import runtime

    if not torch.cuda.is_available() or runtime.INTERPRETED:
        print("sanitize_run: needs a CUDA device with compiled Triton kernels (TRITON_INTERPRET unset)", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    report, failed = {}, False
    for family in args.families or list(families):
        try:
            report[family] = run_family(family, dtype=dtype, say=lambda line: print(line, flush=True))
            failed |= bool(report[family]["fallbacks"]) or not report[family]["kernels"]
        except Exception as exc:  # report and go on: the sanitizer log says where it happened
            text = str(exc).strip().splitlines()
            report[family] = {"error": f"{type(exc).__name__}: {text[0] if text else ''}"}
            print(f"[sanitize] end {family}: FAILED {report[family]['error']}", flush=True)
            failed = True
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"dtype": args.dtype, "families": report}, f, indent=2)
            f.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
