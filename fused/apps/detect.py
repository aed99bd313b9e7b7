"""``facefuse detect PATH... --out DIR``: faces in a user's photos, one JSON record per image.

Writes into DIR, as each image is done: ``records/<name>.json`` (or, with ``--jsonl``, a line of
``records.jsonl``) holding the boxes, scores and landmarks in the image's pixels, its size and the
time per image; with ``--draw``, ``drawn/<name>`` annotated; at the end, or on an interrupt,
``summary.json`` (options, counts, timings, the skipped files and why). Names and the reuse of DIR
are :mod:`fused.apps.outputs`. Unreadable files are reported and skipped. Exit status 0, or 1 when
some files were skipped (the others' records are written), 2 for bad arguments, 3 for a failed
download of the released weights.
"""

from __future__ import annotations

import sys
import time

from . import outputs, run


def run_detect(args) -> int:
    begun = run.start(args, "detect")
    device, use_fused, compare, out, items, progress = (begun.device, begun.use_fused, begun.compare, begun.out,
                                                        begun.items, begun.progress)
    detector, say, records = begun.detector, progress.say, begun.records
    drawn = outputs.drawn_names([item.name for item in items]) if args.draw else {}
    skipped, faces, recorded = [], sum(len(r.get("faces", ())) for r in records.done.values()), 0
    started = time.perf_counter()

    def on_image(item, full, scaled, detections, record):
        nonlocal faces, recorded
        try:
            records.write(record, item.name)
            if "error" not in record and args.draw:
                outputs.draw(full, record["faces"], outputs.in_folder(out / "drawn", drawn[item.name]))
        except OSError as exc:  # this image's outputs only: the batch goes on
            record = {"path": record["path"], "error": f"could not write its outputs ({type(exc).__name__}: {exc})"}
        if "error" in record:
            skipped.append(record)
            say(f"skipped {record['path']}: {record['error']}")
            return
        faces += len(record["faces"])
        recorded += 1

    timings, finished = run.Timings("detection", use_fused), False
    try:
        run.detect_all(items, detector, args, device, use_fused, compare, progress, on_image, timings,
                       done=records.done)
        finished = True
    finally:
        records.close()
        progress.close()
        done = len(records.done) + recorded
        summary = {
            "command": "detect", "model": args.model, "device": device.type, "fused": use_fused,
            "threads": begun.threads, **run.result_options(args, "detect"), "batch": args.batch,
            "images": len(items), "done": done, "resumed": begun.resumed, "skipped": skipped, "faces": faces,
            "finished": finished, "seconds": round(time.perf_counter() - started, 3),
            "timing": timings.summary(),
        }
        summary_path = run.write_summary(out, summary)
    print(f"{done} images, {faces} faces, {len(skipped)} skipped; records in {records.where()}"
          + (f" ({begun.resumed} from the earlier run)" if begun.resumed else "")
          + (f", annotated images in {out / 'drawn'}" if args.draw else ""))
    for line in timings.lines(device):
        print(line)
    print(f"summary: {summary_path}")
    if skipped:
        print(f"{len(skipped)} file{'s' if len(skipped) != 1 else ''} skipped (listed in the summary)", file=sys.stderr)
    return 1 if skipped else 0
