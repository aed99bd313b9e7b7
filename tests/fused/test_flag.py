"""The flag and the record: validation, how global and per-type settings combine, threads."""

import contextvars
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import fused
import reference as R
from fused import flag

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def restore_the_process_setting():
    yield
    fused.set_enabled(True)


def import_with(value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FACEFUSE_FUSED=value)
    code = "import fused; print(fused.is_enabled())"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("value, on", [("0", False), ("off", False), (" No ", False), ("FALSE", False),
                                       ("1", True), ("on", True), ("yes", True), ("", True)])
def test_environment_values(value, on):
    result = import_with(value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(on)


def test_an_unknown_environment_value_is_an_error_at_import():
    result = import_with("disable")
    assert result.returncode != 0
    assert "FACEFUSE_FUSED='disable' is not a valid setting" in result.stderr
    assert "0, false, no, off" in result.stderr


def test_unknown_block_types_are_rejected_with_the_valid_names():
    for call in (lambda: fused.set_enabled(False, block_types={"ssh"}),
                 lambda: fused.enabled(False, block_types="ssh").__enter__()):
        with pytest.raises(ValueError, match=r"unknown block type\(s\) \['ssh'\]; valid names: .*'SSH'"):
            call()
    assert fused.is_enabled() and flag.disabled_block_types() == frozenset()


def test_the_flag_value_must_be_a_bool():
    with pytest.raises(TypeError, match="True or False"):
        fused.set_enabled("no")
    with pytest.raises(TypeError, match="True or False"):
        fused.enabled("off").__enter__()


def test_a_global_setting_clears_per_type_settings():
    fused.set_enabled(False, block_types={"SSH", "FPN"})
    assert not fused.is_enabled("SSH") and fused.is_enabled("conv_dw")
    fused.set_enabled(True)  # everything on
    assert fused.is_enabled("SSH") and fused.is_enabled("FPN") and flag.disabled_block_types() == frozenset()
    with fused.enabled(False, block_types="SSH"):
        with fused.enabled(True):
            assert fused.is_enabled("SSH")
        assert not fused.is_enabled("SSH")


def test_a_per_type_setting_keeps_the_global_switch():
    fused.set_enabled(False)
    fused.set_enabled(True, block_types="SSH")  # the global switch stays off
    assert not fused.is_enabled() and not fused.is_enabled("SSH")
    fused.set_enabled(True)
    fused.set_enabled(False, block_types="SSH")
    assert fused.is_enabled() and not fused.is_enabled("SSH")


def test_set_enabled_inside_a_block_changes_only_the_block():
    with fused.enabled(True):
        fused.set_enabled(False)
        assert not fused.is_enabled()
    assert fused.is_enabled()


def in_thread(fn):
    result, errors = [], []

    def run():
        try:
            result.append(fn())
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


def test_one_threads_block_does_not_change_another_threads_flag():
    with fused.enabled(False):
        assert in_thread(fused.is_enabled)  # a new thread sees the process-wide setting
        here = contextvars.copy_context()
        assert not in_thread(lambda: here.run(fused.is_enabled))  # unless it runs in a copy of this context
    fused.set_enabled(False)  # the process-wide setting: every thread outside its own blocks
    assert not in_thread(fused.is_enabled)


def test_overlapping_blocks_in_two_threads_never_leave_the_flag_stuck():
    # A enters, B enters, A exits, B exits: the order that left the old process-wide flag off.
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with fused.enabled(False):
            a_in.set()
            b_in.wait()
            seen["a"] = fused.is_enabled()
        a_out.set()

    def b():
        a_in.wait()
        with fused.enabled(True, block_types=None):
            b_in.set()
            a_out.wait()
            seen["b"] = fused.is_enabled()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": False, "b": True}
    assert fused.is_enabled() and in_thread(fused.is_enabled)


def test_a_recording_collects_only_its_own_threads_launches(device):
    model = fused.fuse(R.conv_bn(3, 8, 1).eval()).to(device)
    x = torch.randn(1, 3, 6, 6, device=device)
    started, done = threading.Event(), threading.Event()

    def other_thread():
        started.wait()
        with torch.inference_mode(), fused.enabled(False):
            model(x)  # a fallback
        with torch.inference_mode():
            model(x)  # a launch
        done.set()

    t = threading.Thread(target=other_thread)
    t.start()
    with fused.recording() as rec:
        started.set()
        done.wait()
    t.join()
    assert rec.events == []

    def run_model():
        with torch.inference_mode():
            model(x)

    with fused.recording() as rec:
        here = contextvars.copy_context()
        in_thread(lambda: here.run(run_model))  # work carried over in a copy of this context is recorded
    assert rec.kernels() == {"conv2d_bias_act"}
