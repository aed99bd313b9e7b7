"""What ``facefuse detect`` and ``facefuse embed`` write into ``--out``, and how a folder is reused.

* Names. An image's outputs are named after its name (``photos/sub/a.jpg``):
  ``records/photos/sub/a.jpg.json`` and ``drawn/photos/sub/a.jpg``. A file name that would pass the
  255-byte limit of file systems is cut and given a hash of the whole name (:func:`fit`). Drawn
  copies keep JPEG and PNG; others are written as PNG under a name no other image's copy takes.
* Reuse (:func:`prepare`). ``run.json`` holds the command and the options that change results.
  A folder of an earlier run with the same options is resumed: images recorded without an error
  are skipped. Other options, or outputs without ``run.json``, are refused (exit 2) unless
  ``--overwrite``, which deletes this command's outputs (nothing else) first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

#: Everything detect and embed write into --out (what --overwrite deletes).
OUTPUTS = ("run.json", "records", "records.jsonl", "drawn", "summary.json", "faces.jsonl", "embeddings.npy",
           "similarity.csv")
#: The longest file name (one path component) in bytes on common file systems.
NAME_LIMIT = 255
#: Drawn copies keep these formats; others are written as PNG.
KEPT_FORMATS = (".jpg", ".jpeg", ".png")


def fit(name: str, suffix: str = "", limit: int = NAME_LIMIT) -> str:
    """``name + suffix`` when it fits in ``limit`` bytes; else ``name`` cut, ``~`` and 16 hex digits of
    the SHA-256 of the whole ``name``, then ``suffix``: distinct names stay distinct."""
    whole = name + suffix
    if len(os.fsencode(whole)) <= limit:
        return whole
    tag = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    raw = os.fsencode(name)[:limit - len(tag) - len(os.fsencode(suffix))]
    for cut in range(len(raw), max(len(raw) - 4, 0), -1):  # end on a whole UTF-8 character
        try:
            return raw[:cut].decode("utf-8") + tag + suffix
        except UnicodeDecodeError:
            continue
    return os.fsdecode(raw) + tag + suffix


def in_folder(root: Path, name: str, suffix: str = "") -> Path:
    """``root/<folders of name>/<fit(file name of name + suffix)>``."""
    folders, _, base = name.replace("\\", "/").rpartition("/")
    return root.joinpath(*[p for p in folders.split("/") if p], fit(base, suffix))


def display(name: str) -> str:
    """``name`` printable and encodable as UTF-8: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def drawn_names(names: list[str]) -> dict[str, str]:
    """name → the name of its drawn copy: the same for JPEG and PNG, else ``<name>.png``, made unique
    (``a.bmp`` and ``a.bmp.png`` never share ``a.bmp.png``)."""
    taken = {n for n in names if n.lower().endswith(KEPT_FORMATS)}
    out = {n: n for n in taken}
    for n in names:
        if n in out:
            continue
        candidate, i = n + ".png", 1
        while candidate in taken:
            candidate, i = f"{n}-{i}.png", i + 1
        taken.add(candidate)
        out[n] = candidate
    return out


def draw(full, faces: list[dict], path: Path) -> None:
    """Save ``full`` (RGB ``uint8``) with each face's box, score and five landmarks drawn to ``path``;
    lines and dots are sized by the face, not the image."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(full)
    pen = ImageDraw.Draw(image)
    colours = [(255, 0, 0), (0, 255, 255), (255, 0, 255), (0, 255, 0), (0, 0, 255)]
    for face in faces:
        x1, y1, x2, y2 = face["box"]
        side = max(1.0, min(x2 - x1, y2 - y1))
        width = max(1, round(side / 60))
        pen.rectangle([x1, y1, x2, y2], outline=(255, 255, 0), width=width)
        pen.text((x1 + 2, y1 + 2), f"{face['score']:.2f}", fill=(255, 255, 0))
        r = max(1.0, side / 40)
        for (x, y), colour in zip(face["landmarks"], colours):
            pen.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


class ReuseError(ValueError):
    """``--out`` holds outputs this run must not mix with; the message says why and what to do."""


def prepare(out: Path, command: str, options: dict, overwrite: bool, say) -> bool:
    """Make ``out`` ready for a run of ``command`` with ``options``; True when it resumes an earlier
    run. Raises :class:`ReuseError` for a folder holding another run's outputs without ``overwrite``."""
    run_file = out / "run.json"
    present = [name for name in OUTPUTS if (out / name).exists()]
    wanted = {"command": command, "options": options}
    if overwrite and present:
        for name in present:
            target = out / name
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
        say(f"--overwrite: deleted the earlier outputs in {out} ({', '.join(present)})")
        present = []
    resume = False
    if present:
        try:
            earlier = json.loads(run_file.read_text())
        except (OSError, ValueError):
            raise ReuseError(f"--out {out} holds outputs ({', '.join(present)}) of another run with no readable "
                             "run.json; pass --overwrite to delete them, or choose another folder") from None
        if earlier != wanted:
            before = {"command": earlier.get("command"), **(earlier.get("options") or {})}
            now = {"command": command, **options}
            differ = [f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in sorted(set(before) | set(now))
                      if before.get(k) != now.get(k)]
            raise ReuseError(f"--out {out} holds a run with other options ({'; '.join(differ)}); pass --overwrite "
                             "to delete its outputs, or choose another folder")
        resume = True
    out.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(wanted, indent=2) + "\n")
    return resume


class Records:
    """Per-image JSON records written as they come: ``records.jsonl`` (one line each, flushed), or
    ``records/<name>.json`` (one file each); work done survives a crash or an interrupt. Resuming,
    the records without an error are kept (:attr:`done`) and the others are written again."""

    def __init__(self, out: Path, jsonl: bool, resume: bool = False):
        self.out, self.jsonl = out, jsonl
        self.count = 0
        #: name → record, of the images an earlier run recorded without an error.
        self.done: dict[str, dict] = {}
        if resume:
            self.done = self._read_earlier()
        self.file = None
        if jsonl:
            path = out / "records.jsonl"
            with open(path, "w", encoding="utf-8") as f:  # keep the finished records, drop errors and torn lines
                f.writelines(json.dumps(r) + "\n" for r in self.done.values())
            self.file = open(path, "a", encoding="utf-8")

    def _read_earlier(self) -> dict[str, dict]:
        found = []
        if self.jsonl and (self.out / "records.jsonl").exists():
            for line in (self.out / "records.jsonl").read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    found.append(json.loads(line))
                except ValueError:  # the last line of an interrupted run
                    pass
        elif not self.jsonl and (self.out / "records").is_dir():
            for path in sorted((self.out / "records").rglob("*.json")):
                try:
                    found.append(json.loads(path.read_text(encoding="utf-8")))
                except (OSError, ValueError):
                    pass
        return {r["name"]: r for r in found if isinstance(r, dict) and "name" in r and "error" not in r}

    def path(self, name: str) -> Path:
        """Where the record of the image named ``name`` goes (per-image mode)."""
        return in_folder(self.out / "records", name, ".json")

    def write(self, record: dict, name: str) -> None:
        """Write ``record`` (an ``OSError`` if it cannot be: the caller records why and goes on)."""
        text = json.dumps({"name": name, **record})
        if self.file is not None:
            self.file.write(text + "\n")
            self.file.flush()
        else:
            path = self.path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n", encoding="utf-8")
        self.count += 1

    def where(self) -> Path:
        return self.out / ("records.jsonl" if self.jsonl else "records")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
