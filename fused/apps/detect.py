"""``facefuse detect PATH... --out DIR``: faces in a user's photos, one JSON record per image.

Writes into DIR, as each image is done: ``records/<name>.json`` (or, with ``--jsonl``, a line of
``records.jsonl``) holding the boxes, scores and landmarks in the image's pixels, its size and the
time per image; with ``--draw``, ``drawn/<name>`` annotated; at the end ``summary.json``
(options, counts, timings, the skipped files and why). Unreadable files are reported and skipped.
Exit status 0, or 1 when some files were skipped (the others' records are written), 2 for bad
arguments.
"""

from __future__ import annotations

import sys
import time

from . import files, ray_pipeline, run


def add_detect(sub):
    p = sub.add_parser(
        "detect", help="detect faces in images and folders: JSON records, annotated images, fused vs unfused timing",
        description=__doc__.split("\n\n")[0].replace("``", "") + " Images of one size run as one batch.",
    )
    run.add_common(p)
    ray_pipeline.add_options(p)
    p.add_argument("--draw", action="store_true", help="also write annotated copies under DIR/drawn/")
    return p


def run_detect(args) -> int:
    if (code := ray_pipeline.dispatch(args, "detect")) is not None:  # --engine ray
        return code
    begun = run.start(args, "detect")
    device, use_fused, compare, out, items, progress = (begun.device, begun.use_fused, begun.compare, begun.out,
                                                        begun.items, begun.progress)
    detector, say = begun.detector, progress.say
    records = files.Records(out, args.jsonl)
    skipped, faces = [], 0
    started = time.perf_counter()

    def on_image(item, full, scaled, detections, record):
        nonlocal faces
        records.write(record, item.name)
        if "error" in record:
            skipped.append(record)
            say(f"skipped {record['path']}: {record['error']}")
            return
        faces += len(record["faces"])
        if args.draw:
            files.draw(full, record["faces"], files.drawn_path(out, item.name))

    timings, finished = None, False
    try:
        timings = run.detect_all(items, detector, args, device, use_fused, compare, progress, on_image)
        finished = True
    finally:
        records.close()
        progress.close()
        summary = {
            "command": "detect", "model": args.model, "device": device.type, "fused": use_fused,
            "weights": args.weights or ("released" if args.pretrained else f"random (seed {args.seed})"),
            "conf": args.conf, "iou": args.iou, "batch": args.batch, "max_size": args.max_size,
            "images": len(items), "done": records.count - len(skipped), "skipped": skipped, "faces": faces,
            "finished": finished, "seconds": round(time.perf_counter() - started, 3),
            "timing": timings.summary() if timings else None,
        }
        summary_path = run.write_summary(out, summary)
    print(f"{summary['done']} images, {faces} faces, {len(skipped)} skipped; records in {records.where()}"
          + (f", annotated images in {out / 'drawn'}" if args.draw else ""))
    for line in timings.lines(device):
        print(line)
    print(f"summary: {summary_path}")
    if skipped:
        print(f"{len(skipped)} file{'s' if len(skipped) != 1 else ''} skipped (listed in the summary)", file=sys.stderr)
    return 1 if skipped else 0
