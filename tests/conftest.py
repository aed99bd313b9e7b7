"""Test configuration: hypothesis profiles, the device the kernels run on, and GPU markers.

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


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
