"""Test configuration: hypothesis profiles, the device the kernels run on, GPU markers, and how
pytest-xdist splits the suite over processes (``-n auto``, the default in ``pyproject.toml``).

``FACEFUSE_HYPOTHESIS=ci`` (the default) runs few, deterministic examples so the whole suite fits
in CI on two CPU cores through Triton's interpreter; ``FACEFUSE_HYPOTHESIS=thorough`` runs many.
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import fused  # noqa: F401  (sets TRITON_INTERPRET on machines without CUDA before kernels load)

settings.register_profile(
    "ci",
    max_examples=12,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("FACEFUSE_HYPOTHESIS", "ci"))

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture
def device() -> torch.device:
    """The device the Triton kernels run on here: CUDA, or the CPU through the interpreter."""
    return torch.device("cuda" if HAS_CUDA and not fused.runtime.INTERPRETED else "cpu")


@pytest.fixture(autouse=True)
def exact_float32_by_default(monkeypatch):
    """Fused float32 models follow ``torch.backends.cudnn.allow_tf32`` (TF32 on a GPU by default,
    ``fuse(precision="auto")``); the tests compare float32 results with the float32 tolerance, so
    they turn it off. Tests of TF32 ask for it (``precision="tf32"``) or set the flag themselves."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


#: Modules that share one worker process under pytest-xdist, in this order: the site build reuses the
#: executed lessons that test_lessons.py saves (otherwise it executes them again).
XDIST_GROUPS = {"tests/lessons/test_lessons.py": "lessons", "tests/lessons/test_site.py": "lessons"}

#: Work units (modules, or a group) handed out first, the longest first, so that no worker starts a
#: long one at the end while the other idles (measured on 2 cores: see docs/development.md). The
#: inspect baseline comes first: in a fresh clone it compiles every kernel variant (minutes), and
#: the lessons and docs blocks that inspect kernels later read its cache.
SLOW_FIRST = ("tests/measure/test_inspect_baseline.py", "lessons", "tests/lessons/test_readme.py",
              "tests/measure/test_ray_pipeline.py", "tests/fused/test_compile_export.py",
              "tests/measure/test_real_photos.py")


def xdist_scope(nodeid: str) -> str:
    """The work unit of a test under pytest-xdist: its module (so module-scoped fixtures, such as
    the site build or the compiled inspection, run once), or its group in :data:`XDIST_GROUPS`."""
    module = nodeid.split("::", 1)[0]
    return XDIST_GROUPS.get(module, module)


class XdistScheduling:
    """A plugin, registered only while pytest-xdist is active: xdist's scope scheduling with
    :func:`xdist_scope` as the scope, in collection order (:func:`pytest_collection_modifyitems`
    puts :data:`SLOW_FIRST` first)."""

    @staticmethod
    def pytest_xdist_make_scheduler(config, log):
        from xdist.scheduler import LoadScopeScheduling

        class ModuleScheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return xdist_scope(nodeid)

        config.option.loadscopereorder = False  # keep our order, not "most tests first"
        return ModuleScheduling(config, log)


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistScheduling(), "facefuse-xdist-scheduling")
    worker = getattr(config, "workerinput", None)
    if worker is not None:  # share the cores between the workers: no oversubscribed OpenMP threads
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(worker["workercount"])))


def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # an xdist worker: the scheduler takes units in this order
        rank = {scope: i for i, scope in enumerate(SLOW_FIRST)}
        items.sort(key=lambda item: rank.get(xdist_scope(item.nodeid), len(rank)))
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
