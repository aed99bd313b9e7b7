"""The documentation site builds in strict mode (``mkdocs build --strict``), with every page, the
API reference generated from the docstrings and every lesson executed with its outputs.

A broken link, a missing page, an unresolved cross-reference or a lesson that raises fails the
build. The build executes no lesson that ``test_lessons.py`` already ran in this checkout (it
reuses the copies in ``build/lessons/``), so after the lesson tests it takes well under a
minute; alone, it executes the lessons itself (minutes).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lessons.test_lessons import LESSONS, ROOT, site_hooks

yaml = pytest.importorskip("yaml", reason="the docs extra (pip install -e '.[docs]') builds the site")
pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') builds the site")


def mkdocs(args, cwd, timeout):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("FACEFUSE_DOCS_UNEXECUTED", None)
    return subprocess.run([sys.executable, "-m", "mkdocs", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    done = mkdocs(["build", "--strict", "--site-dir", str(out)], ROOT, timeout=1800)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-6000:]}"
    return out


def test_the_site_builds_strict_with_every_page(site):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["strict"] is True

    def pages(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from pages(value) if isinstance(value, list) else [value]

    for page in pages(config["nav"]):
        assert (site / Path(page).with_suffix("") / "index.html").is_file() or page == "index.md", page
    for lesson in LESSONS:
        assert (site / "lessons" / lesson.stem / "index.html").is_file(), f"{lesson.name} is not on the site"


def test_lessons_are_shown_executed_with_outputs(site):
    hooks = site_hooks()
    for lesson in LESSONS:
        assert hooks.current_copy(lesson) is not None, f"no executed copy of {lesson.name} is current"
    page = (site / "lessons" / "06_profiling" / "index.html").read_text()
    assert "data:image/png;base64," in page, "lesson 06's plots are not on its page"
    page = (site / "lessons" / "00_blocks_tour" / "index.html").read_text()
    assert "jp-OutputArea-output" in page and ("<table" in page or "<pre>" in page)


def test_the_api_reference_shows_the_docstrings_with_links(site):
    page = (site / "api" / "fused" / "index.html").read_text()
    assert "Triton fused kernels for the reference blocks" in page  # fused/__init__.py's docstring
    assert 'id="fused.fuse.fuse"' in page or 'id="fused.fuse"' in page
    assert ":func:`" not in page, "a reST role was left as text (docs/griffe_roles.py)"
    assert 'class="autorefs autorefs-internal"' in page
    for name in ("reference", "kernels", "measure", "apps"):
        assert (site / "api" / name / "index.html").stat().st_size > 10_000, name


def test_every_owned_page_is_written():
    """The pages other parts of the project write (docs/hooks.py OWNED_PAGES) exist: until then the
    build shows a placeholder for each."""
    missing = [page for page in site_hooks().OWNED_PAGES if not (ROOT / "docs" / page).is_file()]
    assert not missing, f"docs pages not written yet: {missing}"


def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The site's own link validation settings turn a link to a missing page, or to a missing
    anchor, into a failure."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\n[gone](missing.md), [there](other.md#no-such-heading)\n")
    (tmp_path / "docs" / "other.md").write_text("# Other\n")
    small = {"site_name": "t", "strict": True, "validation": config["validation"], "nav": ["index.md", "other.md"]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(small))
    done = mkdocs(["build", "--strict"], tmp_path, timeout=300)
    assert done.returncode != 0
    assert re.search(r"missing\.md", done.stderr) and "no-such-heading" in done.stderr
