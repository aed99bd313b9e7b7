"""The block-level profiler: one row per block, every conv covered, counts checked by hand, files."""

import dataclasses
import json

import pytest
import torch
from torch import nn

import fused
import reference as R
from fused import profile as P

HAS_FUSE = P.fuse_function() is not None
ON_GPU = torch.cuda.is_available() and not fused.runtime.INTERPRETED
F32 = 4  # bytes per float32

RETINAFACE_BLOCKS = (
    [f"body.stage1.{i}" for i in range(6)] + [f"body.stage2.{i}" for i in range(6)]
    + [f"body.stage3.{i}" for i in range(2)] + ["fpn", "ssh1", "ssh2", "ssh3"]
    + [f"{head}.{i}" for head in ("BboxHead", "ClassHead", "LandmarkHead") for i in range(3)]
)


def retinaface_64():
    model = R.randomize_batchnorm(R.retinaface(seed=0))
    return model, torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def retina_profile():
    model, x = retinaface_64()
    return P.profile_model(model, x, warmup=1, repeats=2, fused=False, device="cpu")


def covering_rows(profile, module_path):
    return [r.path for r in profile.blocks() if module_path == r.path or module_path.startswith(r.path + ".")]


def test_one_row_per_block(retina_profile):
    blocks = retina_profile.blocks()
    assert sorted(r.path for r in blocks) == sorted(RETINAFACE_BLOCKS)
    assert all(r.kind == "block" for r in blocks)  # nothing with compute lies outside RetinaFace's blocks
    types = {r.path: r.block_type for r in blocks}
    assert types["body.stage1.0"] == "conv_bn"
    assert types["body.stage2.3"] == "conv_dw"
    assert (types["fpn"], types["ssh2"], types["ClassHead.1"]) == ("FPN", "SSH", "ClassHead")
    assert [r.kind for r in retina_profile.rows[-2:]] == ["outside", "total"]
    assert [r.path for r in retina_profile.rows[-2:]] == [P.OUTSIDE, P.TOTAL]


def test_every_conv_belongs_to_exactly_one_row(retina_profile):
    model, _ = retinaface_64()
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 56
    for name in convs:
        assert len(covering_rows(retina_profile, name)) == 1, name


def test_flops_and_bytes_by_hand(retina_profile):
    stem = retina_profile.row("body.stage1.0")  # conv_bn(3, 8, stride 2) on 1x3x64x64
    assert stem.input_shapes == "1x3x64x64" and stem.output_shapes == "1x8x32x32"
    assert stem.flops == 2 * 32 * 32 * 8 * 3 * 9
    state = 8 * 3 * 9 + 4 * 8  # conv weight + BN weight, bias, running mean, running var
    assert stem.min_bytes == (3 * 64 * 64 + 8 * 32 * 32 + state) * F32
    assert stem.parameters == 8 * 3 * 9 + 2 * 8
    x, y = 3 * 64 * 64, 8 * 32 * 32  # eager: conv (x → y), BN (y → y), LeakyReLU (y → y)
    assert stem.eager_bytes == ((x + y + 8 * 27) + (2 * y + 4 * 8) + 2 * y) * F32
    assert stem.intensity == pytest.approx(stem.flops / stem.min_bytes)
    assert stem.reduction_length == 27

    dw = retina_profile.row("body.stage1.1")  # conv_dw(8, 16, 1) on 1x8x32x32
    assert dw.flops == 2 * (32 * 32 * 8 * 9 + 32 * 32 * 16 * 8)
    assert dw.min_bytes == (8 * 32 * 32 + 16 * 32 * 32 + 8 * 9 + 4 * 8 + 16 * 8 + 4 * 16) * F32
    assert dw.reduction_length == 9  # max(depthwise 1*3*3, pointwise 8*1*1)

    head = retina_profile.row("ClassHead.0")  # 1x1 conv 64 → 2 anchors x 2 with bias, on 1x64x8x8
    assert head.flops == 2 * 8 * 8 * 4 * 64
    assert head.output_shapes == "1x128x2"
    assert head.min_bytes == (64 * 8 * 8 + 128 * 2 + 4 * 64 + 4) * F32

    total = retina_profile.row(P.TOTAL)
    assert total.flops == sum(r.flops for r in retina_profile.blocks())
    model, _ = retinaface_64()
    assert total.parameters == sum(p.numel() for p in model.parameters())


def test_times_and_summary_rows(retina_profile):
    for r in retina_profile.blocks():
        assert r.ref_median_ms > 0 and r.timing_method == "wall-clock" and r.calls == 1
    outside, total = retina_profile.rows[-2:]
    assert outside.ref_median_ms == pytest.approx(total.ref_median_ms - sum(r.ref_median_ms for r in retina_profile.blocks()))


@pytest.mark.skipif(ON_GPU, reason="CPU-only property")
def test_no_speedups_on_cpu(retina_profile):
    assert all(r.speedup is None and r.fused_median_ms is None for r in retina_profile.rows)


def test_files_round_trip(retina_profile, tmp_path):
    paths = retina_profile.save(tmp_path / "out")
    rows = P.read_csv(paths["csv"])
    assert len(rows) == len(RETINAFACE_BLOCKS) + 2
    assert [r["kind"] for r in rows].count("block") == len(RETINAFACE_BLOCKS)
    assert [r["kind"] for r in rows][-2:] == ["outside", "total"]
    assert rows == [dataclasses.asdict(r) for r in retina_profile.rows]

    back = P.Profile.read_json(paths["json"])
    assert back.rows == retina_profile.rows
    data = json.loads(open(paths["json"]).read())
    assert data["environment"]["torch"] == torch.__version__
    assert {"date", "device", "gpu", "driver", "triton"} <= set(data["environment"])
    assert data["settings"]["input_shape"] == "1x3x64x64"
    with open(paths["chart"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = open(paths["table"]).read()
    assert "body.stage1.0" in table and P.TOTAL in table


def test_arcface_rows_cover_stem_blocks_and_head():
    model = R.randomize_batchnorm(R.arcface(seed=0))
    x = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    prof = P.profile_model(model, x, warmup=0, repeats=1, fused=False)
    paths = [r.path for r in prof.blocks()]
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert paths == ["conv1", "bn1", "prelu", "maxpool", *blocks, "bn4", "dropout", "fc5", "bn5"]
    types = {r.path: r.block_type for r in prof.blocks()}
    assert all(types[b] == "IRBlock" for b in blocks)
    assert (types["conv1"], types["fc5"], types["bn5"]) == ("Conv2d", "Linear", "BatchNorm1d")
    assert prof.row("fc5").flops == 2 * 512 * 512 * 8 * 8
    assert prof.row("conv1").flops == 2 * 64 * 128 * 128 * 9
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert len(covering_rows(prof, name)) == 1, name


def test_fused_columns_empty_with_a_note_without_fuse(monkeypatch):
    monkeypatch.setattr(P, "fuse_function", lambda: None)
    model, x = retinaface_64()
    prof = P.profile_model(model, x, warmup=0, repeats=1, fused=True)
    assert all(r.fused_backend == "" and r.fused_max_abs_error is None for r in prof.rows)
    assert any("fused.fuse is not available" in n for n in prof.notes)


@pytest.mark.skipif(not HAS_FUSE, reason="fused.fuse is not in this checkout yet")
def test_fused_columns():
    # A small model of RetinaFace's blocks keeps the interpreter pass short: conv_bn and conv_dw
    # (fused), SSH (not fused itself, its conv_bn blocks are), ClassHead (not fused).
    model = R.randomize_batchnorm(nn.Sequential(R.conv_bn(3, 8, 2, 0.1), R.conv_dw(8, 16, 1), R.SSH(16, 16), R.ClassHead(16, 2)))
    x = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    check = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    prof = P.profile_model(model.eval(), x, warmup=0, repeats=1, fused=True, check_input=None if ON_GPU else check)
    assert [r.path for r in prof.blocks()] == ["0", "1", "2", "3"]
    rows = {r.path: r for r in prof.rows}
    backend = fused.runtime.backend()
    for r in prof.blocks() + [rows[P.TOTAL]]:
        assert r.fused_within_tolerance is True, (r.path, r.fused_note)
        assert 0 <= r.fused_max_abs_error < 1e-4
    assert rows["0"].fused_backend == backend and "conv2d_bias_act" in rows["0"].fused_kernels
    assert rows["1"].fused_backend == backend and rows["1"].fused_kernels
    assert rows["2"].fused_backend == f"{backend} (inner blocks)" and "not fused" in rows["2"].fused_note
    assert rows["3"].fused_backend == "reference (not fused)"
    assert rows[P.TOTAL].fused_backend == backend
    assert prof.fuse_report  # fused.fuse's report, as text
    if not ON_GPU:
        assert all(r.fused_median_ms is None and r.speedup is None for r in prof.rows)
        assert any("interpreter timings are not speedups" in n for n in prof.notes)
        assert any("smaller input" in n for n in prof.notes)
        assert "speedup" not in prof.table().splitlines()[1]  # no speedup column
    else:
        assert all(r.speedup > 0 for r in prof.blocks())


def test_fused_check_catches_a_wrong_block(monkeypatch):
    if not HAS_FUSE:
        pytest.skip("fused.fuse is not in this checkout yet")
    real_fuse = P.fuse_function()

    def broken_fuse(model):
        model = real_fuse(model)
        model[0][1].running_mean.add_(1.0)  # the fused copy's BN statistics no longer match
        return model

    monkeypatch.setattr(P, "fuse_function", lambda: broken_fuse)
    model = R.randomize_batchnorm(nn.Sequential(R.conv_bn(3, 8, 2, 0.1), R.ClassHead(8, 2))).eval()
    prof = P.profile_model(model, torch.randn(1, 3, 12, 12), warmup=0, repeats=1, fused=True)
    assert prof.row("0").fused_within_tolerance is False
    assert "out of tolerance" in prof.row("0").fused_note
    assert prof.row("1").fused_within_tolerance is True
    assert any("failed the fused check" in n for n in prof.notes)


def test_parse_size_and_inputs():
    assert P.parse_size("320") == (320, 320)
    assert P.parse_size("480x640") == (480, 640)
    for bad in ("", "x", "64x", "abc", "0", "1x2x3", "-5"):
        with pytest.raises(ValueError):
            P.parse_size(bad)
    with pytest.raises(ValueError, match="128"):
        P.input_shape("arcface", (100, 100), 1)
    assert P.input_shape("arcface-se", (128, 128), 2) == (2, 1, 128, 128)
    assert P.input_shape("retinaface", (64, 96), 1) == (1, 3, 64, 96)


@pytest.mark.skipif(not HAS_FUSE, reason="fused.fuse is not in this checkout yet")
def test_gpu_only_code_path_runs(monkeypatch, tmp_path):
    """Exercise the fused-timing branch (GPU only) on this machine; these interpreter timings are
    thrown away, never reported."""
    monkeypatch.setattr(P, "times_fused", lambda device: True)
    model = R.randomize_batchnorm(nn.Sequential(R.conv_bn(3, 8, 2, 0.1), R.ClassHead(8, 2))).eval()
    prof = P.profile_model(model, torch.randn(1, 3, 8, 8), warmup=0, repeats=1, fused=True)
    for path in ("0", "1", P.TOTAL):
        r = prof.row(path)
        assert r.fused_median_ms > 0 and r.speedup > 0
    assert "speedup" in prof.table().splitlines()[1]
    paths = prof.save(tmp_path)  # the chart with reference and fused bars side by side
    assert P.read_csv(paths["csv"])[0]["speedup"] == prof.row("0").speedup
