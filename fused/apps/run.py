"""What ``facefuse detect`` and ``facefuse embed`` share: their options, the models (released,
from a file, or random), and the detection loop over batches of one size with its timings."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import fused
import reference

from . import files

DETECTORS = {"retinaface": "mobile0.25", "retinaface-resnet50": "resnet50"}


def add_common(p: argparse.ArgumentParser) -> None:
    """The options both commands take."""
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders (searched recursively)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the outputs (created if needed)")
    p.add_argument("--model", choices=list(DETECTORS), default="retinaface",
                   help="detector: retinaface = mobile0.25 (default), or retinaface-resnet50")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--weights", metavar="FILE", help="the detector's weight file (.pth, or an ONNX export: .onnx)")
    which.add_argument("--pretrained", action="store_true",
                       help="the released weights, downloaded once into the cache ($FACEFUSE_WEIGHTS_DIR, default "
                            "torch hub's checkpoints folder; $FACEFUSE_WEIGHTS_URL names a mirror)")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                   help="run the fused Triton kernels (default: on a GPU yes; on a CPU no, since there they run in "
                        "Triton's interpreter: correct but slow)")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=None,
                   help="also time the first batch the other way (fused vs unfused) and print both (default: on a GPU)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--conf", type=float, default=0.8, help="score threshold in [0, 1] (default: 0.8)")
    p.add_argument("--iou", type=float, default=0.4, help="NMS overlap threshold in [0, 1] (default: 0.4)")
    p.add_argument("--batch", type=int, default=8, help="images of one size per batch (default: 8)")
    p.add_argument("--max-size", type=int, default=None, metavar="N",
                   help="shrink images whose longer side exceeds N pixels before detection (boxes are given in "
                        "the original pixels); default: full size")
    p.add_argument("--jsonl", action="store_true", help="write all records to records.jsonl (default: one JSON file "
                                                        "per image under records/)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights used without --weights/--pretrained")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def check_common(args) -> None:
    """Usage errors (exit 2) for values argparse cannot check."""
    for name in ("conf", "iou"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            args.parser.error(f"--{name} must be in [0, 1], got {value}")
    if args.batch < 1:
        args.parser.error(f"--batch must be a positive integer, got {args.batch}")
    if args.max_size is not None and args.max_size < files.MIN_SIDE:
        args.parser.error(f"--max-size must be at least {files.MIN_SIDE}, got {args.max_size}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        args.parser.error(f"--out {args.out}: exists and is not a folder")


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


@dataclass
class Start:
    """What both commands set up before their loop: the device and modes, the images (with their
    sizes read), the progress bar and the fused detector."""

    device: torch.device
    use_fused: bool
    compare: bool
    out: Path
    items: list
    progress: "files.Progress"
    detector: torch.nn.Module


def start(args, command: str) -> Start:
    """Check the common options, find the images (none is a usage error), build the detector and
    read every readable image's size."""
    check_common(args)
    device, use_fused, compare = resolve(args)
    out = Path(args.out)
    items = files.find_images(args.paths, exclude=out)
    if not items:
        args.parser.error("no images found in " + ", ".join(args.paths))
    progress = files.Progress(len(items), command, args.quiet)
    detector = build("detector", DETECTORS[args.model], args, args.weights, device, progress.say)
    if use_fused and device.type != "cuda":
        progress.say("fused kernels on a CPU run in Triton's interpreter: correct, but slow (--no-fused for speed)")
    for item in items:
        if item.error is None:
            files.read_size(item, args.max_size)
    return Start(device, use_fused, compare, out, items, progress, detector)


def build(kind: str, network: str, args, weights, device, say) -> torch.nn.Module:
    """A fused model in eval mode on ``device``: released, from ``weights``, or seeded random;
    a file or download that fails is a usage error (exit 2) with the loader's message."""
    try:
        if kind == "detector":
            model = reference.retinaface(network, seed=args.seed, pretrained=args.pretrained and not weights,
                                         progress=not args.quiet)
        else:
            model = reference.arcface(seed=args.seed, pretrained=args.pretrained and not weights, progress=not args.quiet)
        if weights:
            reference.load_weights(model, weights)
    except (OSError, ValueError) as exc:  # WeightFileError, WeightsMismatchError, WeightsDownloadError, ...
        lines = [line if len(line) <= 300 else line[:297] + "..." for line in str(exc).splitlines()[:8]]
        args.parser.error(f"{kind} weights: " + "\n".join(lines))
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
        """Time ``fn`` (``images`` images) both ways: a warm-up run, then the best of 3 (on a CPU, the
        fused path, in Triton's interpreter, runs once)."""
        result = {}
        for mode in (self.fused, not self.fused):
            thorough = device.type == "cuda" or not mode
            with fused.enabled(mode):
                if thorough:
                    fn()  # compiles the kernels, fills the fold and prior caches
                result["fused" if mode else "unfused"] = min(timed(fn, device, 3 if thorough else 1)[1]) / images * 1000
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
            lines.append(f"{self.label}, first batch both ways: fused {f:.1f} ms/{unit}, unfused {u:.1f} ms/{unit} "
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


def detect_all(items, detector, args, device, use_fused: bool, compare: bool, progress, on_image):
    """Run the detector over ``items`` in batches of one size; call ``on_image(item, full, scaled,
    detections, record)`` per image and ``on_image(item, None, None, None, record)`` per skipped one.
    Returns the detection :class:`Timings`."""
    timings = Timings("detection", use_fused)
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
            record = {"path": files.relative(item.path), "width": item.width, "height": item.height,
                      "input_size": list(item.input_size[::-1]), "faces": face_records(detections, sx, sy),
                      "time_ms": round(seconds[0] / len(arrays) * 1000, 3), "batch": len(arrays),
                      "fused": use_fused}
            on_image(item, full, scaled, detections, record)
            progress.update(done=1)
    return timings


def error_record(item) -> dict:
    return {"path": files.relative(item.path), "error": item.error}


def write_summary(out: Path, summary: dict) -> Path:
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path
