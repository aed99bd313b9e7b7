"""Every ```python block of README.md and of the documentation pages (docs/**/*.md) runs as
written, in a fresh Python process (issue 18).

A block runs with its file's own line numbers in its traceback (``File "README.md", line N``,
``File "docs/compile.md", line N``),
on the CPU (``CUDA_VISIBLE_DEVICES=""``: the kernels run in Triton's interpreter), with random
weights (nothing is downloaded: ``FACEFUSE_CACHE`` points at an empty folder; a block calling
``pretrained=True`` gets the released files' keys and shapes from a local mirror folder,
``FACEFUSE_WEIGHTS_URL``), in a temporary
working folder that holds ``group.jpg``, a made-up photo for the snippets that open one.

Two markers, as an HTML comment on the last non-blank line before a block's opening fence:

* ``<!-- readme-test: continues -->``: the block goes on from the block before it (its names,
  ``model`` and ``x`` say), so it runs after it in the same process;
* ``<!-- readme-test: skip: REASON -->``: the block cannot run here (it needs a GPU, or takes many
  minutes); each such block is a skipped test whose reason pytest's summary lists (``-ra``). Keep them rare.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: The files whose python blocks run: the README, then every page of the site, owners' pages included.
DOCUMENTS = [README] + sorted((ROOT / "docs").rglob("*.md"))
MARKER = re.compile(r"^<!--\s*readme-test:\s*(continues|skip:\s*(?P<reason>.*?))\s*-->$")
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass
class Block:
    line: int  # the file's line of the block's first code line
    code: str
    marker: str | None  # "continues", "skip" or None
    reason: str = ""
    file: str = "README.md"  # relative to the project folder


def python_blocks(text: str, file: str = "README.md") -> list[Block]:
    """The ```python blocks of ``text`` (the contents of ``file``), with the marker above each."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):  # not an opening fence with a language
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"{file} line {i + 1}: a ``` block that never closes")
        if m.group(1) == "python":
            above = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = MARKER.match(above)
            marker = None if mark is None else ("continues" if mark.group(1) == "continues" else "skip")
            reason = (mark.group("reason") or "") if mark else ""
            if above.startswith("<!--") and "readme-test" in above and mark is None:
                raise AssertionError(f"{file} line {i}: unknown readme-test marker {above!r}")
            if marker == "skip" and not reason.strip():
                raise AssertionError(f"{file} line {i}: a skipped block must say why (skip: REASON)")
            blocks.append(Block(i + 2, "\n".join(lines[i + 1:end]), marker, reason.strip(), file))
        i = end + 1
    return blocks


def sessions(blocks: list[Block]) -> list[list[Block]]:
    """Blocks grouped into the processes that run them: a ``continues`` block joins the one before it
    (in the same file)."""
    out: list[list[Block]] = []
    for b in blocks:
        if b.marker == "skip":
            continue
        if b.marker == "continues":
            if not out or out[-1][-1].file != b.file:
                raise AssertionError(f"{b.file} line {b.line}: 'continues' with no python block before it")
            out[-1].append(b)
        else:
            out.append([b])
    return out


BLOCKS = [b for doc in DOCUMENTS for b in python_blocks(doc.read_text(), doc.relative_to(ROOT).as_posix())]
#: What test_readme_block_runs runs: each process's blocks, then each skipped block on its own (reported as a skip).
SESSIONS = sessions(BLOCKS) + [[b] for b in BLOCKS if b.marker == "skip"]

#: Runs each block of a session in one namespace, compiled with its file's line numbers.
DRIVER = textwrap.dedent("""
    import sys, traceback
    namespace = {"__name__": "__main__"}
    for file, line, code in BLOCKS:
        try:
            exec(compile("\\n" * (line - 1) + code, file, "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"README-BLOCK-FAILED {line}", file=sys.stderr)
            sys.exit(1)
""")


def test_the_readme_and_the_docs_have_python_blocks_and_few_skips():
    assert any(b.file == "README.md" for b in BLOCKS), "the README's example is a tested python block"
    assert len(BLOCKS) >= 4
    skips = [b for b in BLOCKS if b.marker == "skip"]
    # A template with placeholders (docs/adding-a-block.md) is no example to run: it must still
    # parse, and name the runnable file it is taken from.
    templates = [b for b in skips if b.reason.startswith("a template")]
    for b in templates:
        ast.parse(textwrap.dedent(b.code))
        runnable = re.search(r"(\S+\.py) is the runnable example", b.reason)
        assert runnable and (ROOT / runnable.group(1)).is_file(), f"{b.file} line {b.line}: {b.reason}"
    assert len(skips) - len(templates) <= max(2, len(BLOCKS) // 4), "skips must stay rare"


def test_the_parser_reads_markers_and_line_numbers():
    text = "# t\n\n```python\na = 1\n```\n<!-- readme-test: continues -->\n```python\nb = a\n```\n\n" \
           "<!-- readme-test: skip: needs a GPU -->\n\n```python\nimport cuda_only\n```\n```bash\nls\n```\n"
    blocks = python_blocks(text)
    assert [(b.line, b.marker, b.reason) for b in blocks] == [(4, None, ""), (8, "continues", ""), (14, "skip", "needs a GPU")]
    assert [[b.line for b in s] for s in sessions(blocks)] == [[4, 8]]
    with pytest.raises(AssertionError, match="must say why"):
        python_blocks("<!-- readme-test: skip: -->\n```python\nx\n```\n")
    with pytest.raises(AssertionError, match="docs/b.md line 3: 'continues' with no python block"):
        sessions(python_blocks("```python\na = 1\n```\n", "docs/a.md")
                 + python_blocks("<!-- readme-test: continues -->\n```python\nb = a\n```\n", "docs/b.md"))


def run_session(blocks: list[Block], tmp_path: Path) -> subprocess.CompletedProcess:
    from PIL import Image
    import numpy as np

    photo = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "group.jpg")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "MPLBACKEND": "Agg", "FACEFUSE_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if "FACEFUSE_INSPECT_CACHE" not in env:  # facefuse inspect's compiles: the suite's shared cache, not the empty one
        from fused.measure.inspect.compile import cache_dir

        env["FACEFUSE_INSPECT_CACHE"] = str(cache_dir())
    if any("pretrained=True" in b.code for b in blocks):  # the released files, from a local mirror
        from tests.reference.test_pretrained import spec_file
        from reference import RELEASED

        mirror = tmp_path / "mirror"
        mirror.mkdir()
        for name, release in RELEASED.items():
            (mirror / release.filename).write_bytes(spec_file(name))
        env |= {"FACEFUSE_WEIGHTS_URL": str(mirror), "FACEFUSE_WEIGHTS_DIR": str(tmp_path / "weights")}
    script = f"BLOCKS = {[(b.file, b.line, b.code) for b in blocks]!r}\n" + DRIVER
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)


def test_a_failing_block_is_reported_with_its_readme_line(tmp_path):
    done = run_session([Block(3, "a = 1", None), Block(7, "b = a\nraise ValueError('boom')", "continues")], tmp_path)
    assert done.returncode == 1
    assert 'File "README.md", line 8' in done.stderr and "README-BLOCK-FAILED 7" in done.stderr
    done = run_session([Block(5, "raise ValueError('boom')", None, file="docs/page.md")], tmp_path)
    assert 'File "docs/page.md", line 5' in done.stderr


@pytest.mark.lesson
@pytest.mark.parametrize("session", SESSIONS, ids=[f"{s[0].file}:line-{s[0].line}" for s in SESSIONS])
def test_readme_block_runs(session, tmp_path):
    file = session[0].file
    if session[0].marker == "skip":
        pytest.skip(f"{file} line {session[0].line}: {session[0].reason}")
    done = run_session(session, tmp_path)
    if done.returncode != 0:
        failed = re.search(r"README-BLOCK-FAILED (\d+)", done.stderr)
        where = f"{file} line {failed.group(1)}" if failed else f"{file} blocks at lines {[b.line for b in session]}"
        pytest.fail(f"the python block at {where} fails as written:\n{done.stderr[-4000:]}")
