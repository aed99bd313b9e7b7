"""What ``facefuse detect`` and ``facefuse embed`` share: the models (released, from a file, or
random), the start (device, threads, images, the --out folder), and the detection loop over
batches of one size with its timings. Their options are :mod:`fused.apps.options`."""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import fused
import reference

from ..measure import timing
from . import files, outputs
from .options import DETECTORS

#: Exit status of a failed download of released weights (--pretrained): not a usage error.
DOWNLOAD_FAILED = 3


def resolve(args) -> tuple[torch.device, bool, bool]:
    """``(device, fused, compare)`` with the defaults that depend on the device."""
    from ..measure import models

    try:
        device = models.resolve_device(args.device)
    except ValueError as exc:
        args.parser.error(str(exc))
    on_gpu = device.type == "cuda"
    use_fused = on_gpu if args.fused is None else args.fused
    compare = on_gpu if args.compare is None else args.compare
    return device, use_fused, compare


def result_options(args, command: str) -> dict:
    """The options that change what a run records: an earlier run in --out with others is not resumed."""
    random = f"random (seed {args.seed})"
    found = {"model": args.model, "weights": args.weights or ("released" if args.pretrained else random),
             "conf": args.conf, "iou": args.iou, "max_size": args.max_size, "jsonl": args.jsonl}
    if command == "embed":
        found["identity_weights"] = args.identity_weights or ("released" if args.pretrained else random)
    return found


@dataclass
class Start:
    """What both commands set up before their loop: the device and modes, the CPU threads, the
    images (with their sizes read), the progress bar, the fused detector and the records."""

    device: torch.device
    use_fused: bool
    compare: bool
    threads: int | None
    out: Path
    items: list
    progress: "files.Progress"
    detector: torch.nn.Module
    records: "outputs.Records"
    resumed: int = 0


def start(args, command: str) -> Start:
    """Resolve the device and threads, find the images (none is a usage error), prepare --out
    (resume, refuse or overwrite), build the detector and read every image's size."""
    device, use_fused, compare = resolve(args)
    threads = (args.threads or timing.cpu_threads()) if device.type == "cpu" else None
    if threads is not None:
        torch.set_num_threads(threads)  # one count for the whole run, as profile does
    out = Path(args.out)
    items = files.find_images(args.paths, exclude=out)
    if not items:
        args.parser.error("no images found in " + ", ".join(args.paths))
    progress = files.Progress(len(items), command, args.quiet)
    try:
        resume = outputs.prepare(out, command, result_options(args, command), args.overwrite, progress.say)
    except outputs.ReuseError as exc:
        args.parser.error(str(exc))
    records = outputs.Records(out, args.jsonl, resume)
    resumed = sum(1 for item in items if item.name in records.done)
    if resume:
        progress.say(f"resuming the run in {out}: {resumed} of {len(items)} images already recorded are skipped "
                     "(--overwrite starts over)")
        progress.total -= resumed
    detector = build("detector", DETECTORS[args.model], args, args.weights, device, progress.say)
    if use_fused and device.type != "cuda":
        progress.say("fused kernels on a CPU run in Triton's interpreter: correct, but slow (--no-fused for speed)")
    if threads is not None:
        progress.say(f"{threads} torch thread{'s' if threads != 1 else ''} on the CPU (--threads to change)")
    for item in items:
        if item.error is None and item.name not in records.done:
            files.read_size(item, args.max_size)
    return Start(device, use_fused, compare, threads, out, items, progress, detector, records, resumed)


def build(kind: str, network: str, args, weights, device, say) -> torch.nn.Module:
    """A fused model in eval mode on ``device``: released, from ``weights``, or seeded random. A
    bad file is a usage error (exit 2) and a failed download exits with :data:`DOWNLOAD_FAILED`,
    each with the loader's whole message."""
    try:
        if kind == "detector":
            model = reference.retinaface(network, seed=args.seed, pretrained=args.pretrained and not weights,
                                         progress=not args.quiet)
        else:
            model = reference.arcface(seed=args.seed, pretrained=args.pretrained and not weights, progress=not args.quiet)
        if weights:
            reference.load_weights(model, weights)
    except reference.WeightsDownloadError as exc:
        print(f"facefuse {args.command}: {kind} weights: {exc}", file=sys.stderr)
        raise SystemExit(DOWNLOAD_FAILED) from None
    except (OSError, ValueError) as exc:  # WeightFileError, WeightsMismatchError, ...
        args.parser.error(f"{kind} weights: {exc}")
    if not (weights or args.pretrained):
        reference.randomize_batchnorm(model, seed=args.seed)
        say(f"the {kind} has random weights (seed {args.seed}): its outputs are meaningless; pass --pretrained "
            "for the released weights")
    return fused.fuse(model.to(device).eval())


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int = 1):
    """``(result, [seconds per run])`` of ``repeats`` runs of ``fn``."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return result, times


@dataclass
class Timings:
    """Seconds per image of one stage (detection or embedding), in the run's mode and, compared, the other."""

    label: str
    fused: bool
    unit: str = "image"
    #: ``(seconds, images)`` of every batch.
    batches: list[tuple[float, int]] = field(default_factory=list)
    compared: dict | None = None

    def add(self, seconds: float, images: int) -> None:
        self.batches.append((seconds, images))

    def compare(self, fn, images: int, device) -> None:
        """Time ``fn`` (``images`` images) both ways: a warm-up run, then the median of 3 (the statistic
        of the run's own line; on a CPU, the fused path, in Triton's interpreter, runs once)."""
        result = {}
        for mode in (self.fused, not self.fused):
            thorough = device.type == "cuda" or not mode
            with fused.enabled(mode):
                if thorough:
                    fn()  # compiles the kernels, fills the fold and prior caches
                runs = timed(fn, device, 3 if thorough else 1)[1]
                result["fused" if mode else "unfused"] = statistics.median(runs) / images * 1000
        self.compared = result

    def summary(self) -> dict:
        # The first batch compiles kernels and fills caches: left out when there are others.
        steady = self.batches[1:] if len(self.batches) > 1 else self.batches
        steady = [seconds / n for seconds, n in steady for _ in range(n)]
        out = {"mode": "fused" if self.fused else "unfused", "count": len(steady),
               "first_batch_left_out": len(self.batches) > 1,
               "unit": self.unit,
               "median_ms_per_unit": statistics.median(steady) * 1000 if steady else None}
        if self.compared:
            out["compared_ms_per_unit"] = self.compared
        return out

    def lines(self, device) -> list[str]:
        s = self.summary()
        where = "GPU" if device.type == "cuda" else "CPU"
        fused_note = " (Triton's interpreter: correctness only, not a speedup)" if self.fused and where == "CPU" else ""
        lines = []
        unit = self.unit
        if s["median_ms_per_unit"] is not None:
            lines.append(f"{self.label}: {s['mode']}{fused_note} {s['median_ms_per_unit']:.1f} ms/{unit} "
                         f"(median of {s['count']} {unit}s on the {where}"
                         + (", the first batch left out: it includes warm-up)" if s["first_batch_left_out"] else ")"))
        if self.compared:
            f, u = self.compared["fused"], self.compared["unfused"]
            lines.append(f"{self.label}, first batch both ways (median of the runs after a warm-up): fused {f:.1f} "
                         f"ms/{unit}, unfused {u:.1f} ms/{unit} "
                         f"({u / f:.2f}x)" + (" - on a CPU the fused kernels run in Triton's interpreter, "
                                              "so this is no speedup" if where == "CPU" else ""))
        elif s["median_ms_per_unit"] is not None:
            lines.append(f"{self.label}: pass --compare to time the first batch {'un' if self.fused else ''}fused too")
        return lines


def face_records(detections, scale_x: float, scale_y: float) -> list[dict]:
    """One dict per face (box, score, five landmarks) in the original image's pixels."""
    boxes, scores, landmarks = detections.numpy()
    out = []
    for box, score, points in zip(boxes, scores, landmarks):
        out.append({
            "box": [round(float(v) * s, 2) for v, s in zip(box, (scale_x, scale_y, scale_x, scale_y))],
            "score": round(float(score), 5),
            "landmarks": [[round(float(x) * scale_x, 2), round(float(y) * scale_y, 2)] for x, y in points],
        })
    return out


def detect_all(items, detector, args, device, use_fused: bool, compare: bool, progress, on_image,
               timings: Timings, done=()):
    """Run the detector over ``items`` (but those named in ``done``) in batches of one size, adding to
    ``timings``; call ``on_image(item, full, scaled, detections, record)`` per image and
    ``on_image(item, None, None, None, record)`` per skipped one."""
    items = [item for item in items if item.name not in done]
    for item in items:
        if item.error is not None:
            on_image(item, None, None, None, error_record(item))
            progress.update(skipped=1)
    for batch in files.batches(items, args.batch):
        loaded = []
        for item in batch:
            try:
                loaded.append((item, *files.load(item)))
            except Exception as exc:  # truncated or damaged pixel data
                item.error = f"cannot read the image ({type(exc).__name__}: {exc})"
                on_image(item, None, None, None, error_record(item))
                progress.update(skipped=1)
        if not loaded:
            continue
        arrays = [scaled for _, _, scaled in loaded]

        def run():
            return reference.detect(detector, arrays, conf=args.conf, iou=args.iou, channel_order="rgb")

        try:
            with fused.enabled(use_fused):
                found, seconds = timed(run, device)
        except Exception as exc:  # e.g. out of memory on a huge image: skip this batch, keep going
            for item, _, _ in loaded:
                item.error = f"detection failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
                on_image(item, None, None, None, error_record(item))
            progress.update(skipped=len(loaded))
            continue
        if timings.compared is None and compare:
            timings.compare(run, len(arrays), device)
        timings.add(seconds[0], len(arrays))
        for (item, full, scaled), detections in zip(loaded, found):
            sx, sy = full.shape[1] / scaled.shape[1], full.shape[0] / scaled.shape[0]
            record = {"path": outputs.display(files.relative(item.path)), "width": item.width, "height": item.height,
                      "input_size": list(item.input_size[::-1]), "faces": face_records(detections, sx, sy),
                      "time_ms": round(seconds[0] / len(arrays) * 1000, 3), "batch": len(arrays),
                      "fused": use_fused}
            on_image(item, full, scaled, detections, record)
            progress.update(done=1)


def error_record(item) -> dict:
    return {"path": outputs.display(files.relative(item.path)), "error": item.error}


def write_summary(out: Path, summary: dict) -> Path:
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path
