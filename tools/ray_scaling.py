"""Images per second: single-process ``facefuse detect`` against ``--engine ray`` with 1 and 2 actors,
side by side in one run, on the CPU (reference path: ``--no-fused``), one torch thread per process.

    PYTHONPATH=. python tools/ray_scaling.py [--images 48] [--size 160] [--batch 4]

Each engine runs twice: on one image (its fixed cost: process or actor start, model build) and on
all of them; ``steady`` is ``(images - 1) / (time(all) - time(one))``, the rate once started. A
first 1-image Ray run, not counted, sets up the driver's Ray Data executor.
Generated noise images of one size, random weights (the work per image does not depend on them).
Prints a Markdown table (docs/ray.md) and the machine's load average, since the CPUs may be shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ["OMP_NUM_THREADS"] = "1"
ROOT = Path(__file__).resolve().parents[1]


def corpus(folder: Path, count: int, size: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return folder


def single(paths, out: Path, batch: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fused", "detect", *map(str, paths), "--out", str(out), "--no-fused",
                    "--device", "cpu", "--batch", str(batch), "--quiet", "--jsonl"], check=False,
                   stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def on_ray(paths, out: Path, batch: int, actors: int) -> float:
    from fused.apps import ray_pipeline

    settings = ray_pipeline.Settings(fused=False, device="cpu", batch=batch, threads=1)
    start = time.perf_counter()
    ray_pipeline.run_corpus(paths, out, settings, concurrency=actors, say=lambda line: None)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--size", type=int, default=160, help="image side in pixels (default 160)")
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args(argv)

    import ray

    work = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    images = corpus(work / "photos", args.images, args.size)
    one = sorted(images.iterdir())[:1]
    os.environ["PYTHONPATH"] = str(ROOT)  # the Ray workers import this checkout
    started = time.perf_counter()
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)  # 2 actors + 1 CPU for the writes
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_start = time.perf_counter() - started
    started = time.perf_counter()
    on_ray(one, work / "warm-up", args.batch, 1)  # the driver's first Ray Data run sets up its executor: not counted
    ray_warm_up = time.perf_counter() - started
    engines = [("single process (CLI)", lambda p, o: single(p, o, args.batch))]
    engines += [(f"Ray, {n} actor{'s' * (n > 1)}", lambda p, o, n=n: on_ray(p, o, args.batch, n)) for n in (1, 2)]
    rows = []
    for label, fn in engines:
        t1 = fn(one, work / f"{len(rows)}-one")
        tn = fn([images], work / f"{len(rows)}-all")
        rows.append((label, t1, tn, args.images / tn, (args.images - 1) / (tn - t1) if tn > t1 else float("nan")))
    ray.shutdown()
    load = os.getloadavg()
    print(f"{args.images} images {args.size}x{args.size}, batch {args.batch}, reference path (--no-fused) on the "
          f"CPU, 1 torch thread per process/actor; {os.cpu_count()} CPUs, load average {load[0]:.1f} "
          f"{load[1]:.1f} {load[2]:.1f} after the run; ray.init {ray_start:.1f} s, a first (uncounted) 1-image Ray "
          f"run {ray_warm_up:.1f} s\n")
    print("| engine | 1 image (s) | all images (s) | images/s, end to end | images/s, steady |")
    print("|---|---:|---:|---:|---:|")
    for label, t1, tn, rate, steady in rows:
        print(f"| {label} | {t1:.1f} | {tn:.1f} | {rate:.2f} | {steady:.2f} |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
