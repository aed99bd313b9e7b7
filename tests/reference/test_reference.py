"""The reference modules: exact state_dicts, shapes, block semantics, weights, bad input."""

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference as R

DATA = Path(__file__).resolve().parents[1] / "data"


def spec_keys(fname):
    rows = [line.rstrip("\n").split("\t") for line in open(DATA / fname) if not line.startswith("#")]
    return [(k, shape) for k, shape in rows]


@pytest.mark.parametrize(
    "build, fname, n_params",
    [
        (lambda: R.retinaface("mobile0.25"), "retinaface_mobilenet0.25.txt", 426_608),
        (lambda: R.retinaface("resnet50"), "retinaface_resnet50.txt", 27_293_600),
        (lambda: R.arcface(use_se=False), "arcface_resnet18_ir.txt", 25_627_081),
        (lambda: R.arcface(use_se=True), "arcface_resnet18_ir_se.txt", 25_716_169),
    ],
    ids=["mobile0.25", "resnet50", "ir18", "ir18-se"],
)
def test_state_dict_matches_spec(build, fname, n_params):
    model = build()
    got = [(k, str(tuple(v.shape))) for k, v in model.state_dict().items()]
    assert got == spec_keys(fname)
    assert sum(p.numel() for p in model.parameters()) == n_params


@pytest.mark.parametrize("hw, priors", [((640, 640), 16800), ((480, 640), 12600), ((1080, 1920), 85200)])
def test_prior_count_formula(hw, priors):
    assert R.num_priors(*hw) == priors


@pytest.mark.parametrize("hw", [(64, 64), (48, 80), (67, 45)])
def test_retinaface_output_shapes(hw):
    model = R.retinaface()
    boxes, scores, landmarks = model(torch.randn(2, 3, *hw))
    p = R.num_priors(*hw)
    assert boxes.shape == (2, p, 4) and scores.shape == (2, p, 2) and landmarks.shape == (2, p, 10)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2, p))


def test_fpn_handles_odd_sizes_like_1080_rows():
    """A 1080-row input gives maps of 135, 68 and 34 rows; FPN upsamples by explicit size."""
    body = R.retinaface().body
    maps = body(torch.randn(1, 3, 1080, 24))
    assert [m.shape[2] for m in maps] == [135, 68, 34]
    fpn = R.FPN([64, 128, 256], 64).eval()
    outs = fpn([torch.randn(1, c, h, 3) for c, h in zip([64, 128, 256], [135, 68, 34])])
    assert [o.shape[2] for o in outs] == [135, 68, 34]


def test_mobilenet_stage_shapes():
    net = R.MobileNetV1().eval()
    x = torch.randn(1, 3, 64, 64)
    s1 = net.stage1(x)
    s2 = net.stage2(s1)
    s3 = net.stage3(s2)
    assert s1.shape == (1, 64, 8, 8) and s2.shape == (1, 128, 4, 4) and s3.shape == (1, 256, 2, 2)
    assert net(x).shape == (1, 1000)


@pytest.mark.parametrize(
    "helper, args, kinds",
    [
        (R.conv_bn, (3, 8, 2, 0.1), [nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU]),
        (R.conv_bn_no_relu, (8, 8, 1), [nn.Conv2d, nn.BatchNorm2d]),
        (R.conv_bn1X1, (8, 16, 1, 0.1), [nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU]),
        (R.conv_dw, (8, 16, 2), [nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU] * 2),
    ],
)
def test_conv_helpers_layers(helper, args, kinds):
    seq = helper(*args)
    assert [type(m) for m in seq] == kinds
    assert all(m.bias is None for m in seq if isinstance(m, nn.Conv2d))
    assert all(m.inplace for m in seq if isinstance(m, nn.LeakyReLU))


def test_conv_helper_defaults():
    assert R.conv_bn(3, 8)[0].stride == (1, 1) and R.conv_bn(3, 8)[2].negative_slope == 0
    assert R.conv_dw(8, 16, 1)[2].negative_slope == 0.1 and R.conv_dw(8, 16, 1)[0].groups == 8
    assert R.conv_bn1X1(8, 16, 1)[0].kernel_size == (1, 1) and R.conv_bn1X1(8, 16, 1)[2].negative_slope == 0


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def test_ssh_branch_order_and_final_relu():
    torch.manual_seed(0)
    ssh = R.randomize_batchnorm(R.SSH(16, 16)).eval()
    x = torch.randn(2, 16, 5, 7)

    def cb(seq, inp, act):
        y = _bn(F.conv2d(inp, seq[0].weight, padding=1), seq[1])
        return F.leaky_relu(y, seq[2].negative_slope) if act else y

    c = cb(ssh.conv5X5_1, x, True)
    expected = torch.relu(torch.cat([
        cb(ssh.conv3X3, x, False),
        cb(ssh.conv5X5_2, c, False),
        cb(ssh.conv7x7_3, cb(ssh.conv7X7_2, c, True), False),
    ], 1))
    torch.testing.assert_close(ssh(x), expected)
    assert ssh.conv5X5_1[2].negative_slope == 0.1 and R.SSH(128, 128).conv5X5_1[2].negative_slope == 0


def test_fpn_nearest_upsample_by_explicit_size():
    torch.manual_seed(0)
    fpn = R.randomize_batchnorm(R.FPN([4, 8, 16], 8)).eval()
    f = [torch.randn(1, 4, 9, 7), torch.randn(1, 8, 5, 4), torch.randn(1, 16, 3, 2)]

    def up(src, size):  # output row d reads source row floor(d * in / out)
        rows = (torch.arange(size[0]) * src.shape[2]) // size[0]
        cols = (torch.arange(size[1]) * src.shape[3]) // size[1]
        return src[:, :, rows][:, :, :, cols]

    o1, o2, o3 = fpn.output1(f[0]), fpn.output2(f[1]), fpn.output3(f[2])
    o2 = fpn.merge2(o2 + up(o3, o2.shape[-2:]))
    o1 = fpn.merge1(o1 + up(o2, o1.shape[-2:]))
    for got, want in zip(fpn(f), [o1, o2, o3]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("head, values", [(R.ClassHead, 2), (R.BboxHead, 4), (R.LandmarkHead, 10)])
def test_heads_permute_and_reshape(head, values):
    h = head(inchannels=8, num_anchors=2)
    x = torch.randn(2, 8, 3, 5)
    y = F.conv2d(x, h.conv1x1.weight, h.conv1x1.bias)  # [N, 2*values, H, W]
    expected = y.permute(0, 2, 3, 1).reshape(2, 3 * 5 * 2, values)
    torch.testing.assert_close(h(x), expected)
    assert h.conv1x1.bias is not None
    assert len(R.make_class_head()) == 3 and R.make_bbox_head()[0].conv1x1.out_channels == 8


def test_irblock_shares_one_prelu():
    torch.manual_seed(0)
    ds = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
    block = R.randomize_batchnorm(R.IRBlock(8, 16, 2, ds, use_se=True)).eval()
    x = torch.randn(2, 8, 6, 6)
    a = block.prelu.weight
    out = _bn(x, block.bn0)
    out = F.prelu(_bn(F.conv2d(out, block.conv1.weight, padding=1), block.bn1), a)
    out = _bn(F.conv2d(out, block.conv2.weight, stride=2, padding=1), block.bn2)
    out = block.se(out)
    out = F.prelu(out + block.downsample(x), a)
    torch.testing.assert_close(block(x), out)
    assert not hasattr(R.IRBlock(8, 8, use_se=False), "se")


def test_seblock_is_pool_mlp_sigmoid_scale():
    se = R.SEBlock(32).eval()
    x = torch.randn(2, 32, 5, 5)
    fc1, prelu, fc2 = se.fc[0], se.fc[1], se.fc[2]
    gate = torch.sigmoid(fc2(F.prelu(fc1(x.mean((2, 3))), prelu.weight)))
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])
    assert fc1.out_features == 2


@pytest.mark.parametrize("block", [R.BasicBlock, R.Bottleneck])
def test_basic_and_bottleneck_blocks(block):
    torch.manual_seed(0)
    planes = 8
    ds = nn.Sequential(nn.Conv2d(16, planes * block.expansion, 1, 2, bias=False), nn.BatchNorm2d(planes * block.expansion))
    b = R.randomize_batchnorm(block(16, planes, 2, ds)).eval()
    x = torch.randn(1, 16, 7, 7)
    if block is R.BasicBlock:
        out = F.relu(_bn(F.conv2d(x, b.conv1.weight, stride=2, padding=1), b.bn1))
        out = _bn(F.conv2d(out, b.conv2.weight, padding=1), b.bn2)
    else:
        out = F.relu(_bn(F.conv2d(x, b.conv1.weight), b.bn1))
        out = F.relu(_bn(F.conv2d(out, b.conv2.weight, stride=2, padding=1), b.bn2))
        out = _bn(F.conv2d(out, b.conv3.weight), b.bn3)
    torch.testing.assert_close(b(x), F.relu(out + ds(x)))


def test_arcface_embedding_shape_and_init():
    model = R.arcface()
    assert model(torch.randn(2, 1, 128, 128)).shape == (2, 512)
    assert float(model.fc5.bias.detach().abs().max()) == 0 and float(model.bn5.weight.detach().min()) == 1
    torch.testing.assert_close(R.arcface().fc5.weight, model.fc5.weight)  # seeded: deterministic


def test_models_are_deterministic_and_do_not_touch_global_rng():
    state = torch.random.get_rng_state()
    a, b = R.retinaface(seed=3), R.retinaface(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


#: What reference.block_type named in each model when the block classes were a hand-kept list
#: (before @block_class): block type → count; every other module is None.
BLOCK_TYPES_BEFORE = {
    "mobile0.25": ({"BboxHead": 3, "ClassHead": 3, "FPN": 1, "LandmarkHead": 3, "SSH": 3, "conv_bn": 9,
                    "conv_bn1X1": 3, "conv_bn_no_relu": 9, "conv_dw": 13}, 196),
    "resnet50": ({"BboxHead": 3, "Bottleneck": 16, "ClassHead": 3, "FPN": 1, "LandmarkHead": 3, "SSH": 3,
                  "conv_bn": 8, "conv_bn1X1": 3, "conv_bn_no_relu": 9, "conv_bn_pair": 4}, 246),
    "arcface": ({"IRBlock": 8, "conv_bn_pair": 3}, 78),
    "arcface-se": ({"IRBlock": 8, "SEBlock": 8, "conv_bn_pair": 3}, 134),
}
BLOCK_CLASSES = {"SSH", "FPN", "ClassHead", "BboxHead", "LandmarkHead", "IRBlock", "BasicBlock", "Bottleneck", "SEBlock"}


@pytest.mark.parametrize("name", list(BLOCK_TYPES_BEFORE))
def test_block_type_of_every_module_is_unchanged(name):
    """@block_class on the reference classes names exactly the modules the hand-kept list named:
    the same counts per type, and a class's name only for the nine block classes."""
    model = R.arcface(use_se=name.endswith("-se")) if name.startswith("arcface") else R.retinaface(name)
    modules = [m for _, m in model.named_modules()]
    counts, total = BLOCK_TYPES_BEFORE[name]
    found = {}
    for m in modules:
        kind = R.block_type(m)
        if kind is not None:
            found[kind] = found.get(kind, 0) + 1
        if type(m) is not nn.Sequential:
            assert kind == (type(m).__name__ if type(m).__name__ in BLOCK_CLASSES else None), type(m)
    assert (found, len(modules)) == (counts, total)


def test_block_class_marks_a_class_as_a_block():
    from reference.block_types import block_class

    @block_class
    class Foo(nn.Module):
        pass

    class Bar(nn.Module):
        pass

    assert R.block_type(Foo()) == "Foo" and R.block_type(Bar()) is None


def test_block_type_names():
    m = R.retinaface()
    assert R.block_type(m.body.stage1[0]) == "conv_bn"
    assert R.block_type(m.body.stage1[1]) == "conv_dw"
    assert R.block_type(m.fpn.output1) == "conv_bn1X1"
    assert R.block_type(m.ssh1.conv3X3) == "conv_bn_no_relu"
    assert R.block_type(m.ssh1) == "SSH" and R.block_type(m.ClassHead[0]) == "ClassHead"
    assert R.block_type(R.arcface().layer2[0].downsample) == "conv_bn_pair"
    assert R.block_type(nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU())) is None


# --- weights -------------------------------------------------------------------------------------


def test_weights_round_trip_through_a_file(tmp_path):
    src = R.randomize_batchnorm(R.retinaface(seed=1))
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    dst = R.load_weights(R.retinaface(seed=2), path)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def test_weights_module_prefix_is_stripped(tmp_path):
    src = R.arcface(seed=1)
    path = tmp_path / "w.pth"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, path)
    dst = R.load_weights(R.arcface(seed=2), path)
    assert torch.equal(dst.fc5.weight, src.fc5.weight)


def test_weights_mismatch_lists_missing_unexpected_and_misshapen_keys():
    model = R.retinaface()
    state = dict(model.state_dict())
    del state["fpn.output1.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["ssh1.conv3X3.0.weight"] = torch.zeros(1, 2, 3, 3)
    before = model.ssh2.conv3X3[0].weight.clone()
    with pytest.raises(R.WeightsMismatchError) as err:
        R.load_weights(model, state)
    msg = str(err.value)
    assert "missing keys (1): fpn.output1.0.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "wrong shape for ssh1.conv3X3.0.weight: model has (32, 64, 3, 3), weights have (1, 2, 3, 3)" in msg
    assert isinstance(err.value, ValueError)
    assert torch.equal(model.ssh2.conv3X3[0].weight, before)


def test_weights_are_loaded_with_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": object()}, path)
    with pytest.raises(R.WeightFileError, match=r"evil.pth': holds more than tensors.*weights_only=True is deliberate"):
        R.load_weights(R.SEBlock(16), path)


def test_weights_missing_file_and_non_mapping():
    with pytest.raises(FileNotFoundError):
        R.load_weights(R.SEBlock(16), "/nonexistent/weights.pth")
    with pytest.raises(TypeError, match="state_dict"):
        R.load_weights(R.SEBlock(16), [1, 2, 3])


def state_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_equal(model, before):
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k


@pytest.mark.parametrize(
    "bad, match",
    [
        ([1.0, 2.0], "builtins.list, not a torch.Tensor"),
        (np.zeros((16,), np.float32), "numpy.ndarray, not a torch.Tensor; convert it with torch.from_numpy"),
        (torch.zeros(16, dtype=torch.complex64), "complex64 cannot be copied into the model's torch.float32"),
        (torch.zeros(16, dtype=torch.bool), "bool cannot be copied"),
        (torch.empty(16, device="meta"), "expected an ordinary dense tensor"),
    ],
)
def test_failed_load_leaves_the_model_unchanged_and_names_the_key(bad, match):
    # The last key: before the fix the four keys ahead of it were copied, then the load raised.
    model = R.SEBlock(16)
    before = state_of(model)
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    state["fc.2.bias"] = bad
    with pytest.raises(R.WeightsMismatchError, match="wrong value for fc.2.bias: .*" + re.escape(match)):
        R.load_weights(model, state)
    assert_state_equal(model, before)


def test_float_into_an_integer_buffer_is_refused_and_ints_into_floats_are_exact():
    model = R.retinaface()
    before = state_of(model)
    state = dict(before)
    key = "body.stage1.0.1.num_batches_tracked"
    state[key] = torch.tensor(2.5)
    with pytest.raises(R.WeightsMismatchError, match=f"wrong value for {key}: dtype torch.float32 cannot"):
        R.load_weights(model, state)
    assert_state_equal(model, before)
    state = dict(before, **{"fpn.output1.0.weight": torch.ones_like(before["fpn.output1.0.weight"], dtype=torch.int64)})
    assert bool((R.load_weights(model, state).fpn.output1[0].weight == 1).all())


def test_a_load_that_fails_while_copying_is_undone():
    model = R.SEBlock(16)
    before = state_of(model)

    def refuse(module, incompatible_keys):
        raise RuntimeError("a hook refused the weights")

    model.register_load_state_dict_post_hook(refuse)
    with pytest.raises(RuntimeError, match="a hook refused"):
        R.load_weights(model, {k: torch.randn_like(v) for k, v in before.items()})
    assert_state_equal(model, before)


def test_non_string_keys_are_reported_not_crashed_on():
    model = R.SEBlock(16)
    state = dict(model.state_dict())
    state[0] = torch.zeros(1)
    with pytest.raises(R.WeightsMismatchError, match=r"unexpected keys \(1\): 0"):
        R.load_weights(model, state)


def saved_bytes(model):
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "contents, match",
    [
        (lambda: saved_bytes(R.SEBlock(16))[:300], "is truncated or damaged: it starts as a zip archive written by torch.save"),
        (lambda: b"", r"is empty \(0 bytes\).*fetch it again"),
        (lambda: b"hello weights\n", r"is a text file \(it begins 'hello weights'\), not a torch.save file"),
        (lambda: b"<!DOCTYPE html><html>Not Found</html>", "is a text file .*error page"),
        (lambda: b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n", "is a Git LFS pointer.*git lfs pull"),
        (lambda: (40).to_bytes(8, "little") + b'{"w": {"dtype": "F32"}}', r"is not a torch.save file; it looks like a .safetensors file.*safetensors\.torch\.load_file"),
        (lambda: bytes(range(256)), "is not a torch.save file"),
    ],
)
def test_bad_weight_files_name_the_file_and_the_problem(tmp_path, contents, match):
    path = tmp_path / "w.pth"
    path.write_bytes(contents())
    model = R.SEBlock(16)
    before = state_of(model)
    with pytest.raises(R.WeightFileError, match=re.escape(repr(str(path))) + ": " + match) as err:
        R.load_weights(model, path)
    assert isinstance(err.value, ValueError) and err.value.source == repr(str(path))
    assert_state_equal(model, before)
    with pytest.raises(R.WeightFileError, match="<BytesIO>: " + match):  # the same from an open file
        R.read_state_dict(io.BytesIO(path.read_bytes()))


def test_weight_file_that_is_a_folder_a_tensor_or_bytes(tmp_path):
    with pytest.raises(R.WeightFileError, match="is a folder, not a file"):
        R.load_weights(R.SEBlock(16), tmp_path)
    path = tmp_path / "t.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(R.WeightFileError, match=r"t.pth': holds a Tensor, not a state_dict.*model.state_dict\(\)"):
        R.load_weights(R.SEBlock(16), path)
    with pytest.raises(TypeError, match=r"bytes .*os.fsdecode\(path\).*io.BytesIO\(contents\)"):
        R.load_weights(R.SEBlock(16), os.fsencode(str(path)))


def test_weights_load_from_an_open_file():
    src = R.SEBlock(16)
    dst = R.load_weights(R.SEBlock(16), io.BytesIO(saved_bytes(src)))
    assert torch.equal(dst.fc[2].bias, src.fc[2].bias)


def test_weights_mismatch_from_a_file_names_the_file(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(R.SEBlock(32).state_dict(), path)
    with pytest.raises(R.WeightsMismatchError, match=re.escape(f"weights from {str(path)!r} do not match the model")):
        R.load_weights(R.SEBlock(16), path)


# --- bad input -----------------------------------------------------------------------------------


def test_ssh_rejects_out_channel_not_multiple_of_4():
    with pytest.raises(ValueError, match="multiple of 4"):
        R.SSH(16, 18)


def test_fpn_rejects_other_than_three_maps():
    fpn = R.FPN([4, 8, 16], 8)
    with pytest.raises(ValueError, match="three feature maps"):
        fpn([torch.randn(1, 4, 4, 4), torch.randn(1, 8, 2, 2)])
    with pytest.raises(ValueError, match="three input widths"):
        R.FPN([4, 8], 8)
    with pytest.raises(ValueError, match="expects 8 input channels, got 9"):
        fpn([torch.randn(1, 4, 4, 4), torch.randn(1, 9, 2, 2), torch.randn(1, 16, 1, 1)])


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.randn(3, 64, 64), ValueError, "4-D tensor"),
        (torch.randn(1, 1, 64, 64), ValueError, "expects 3 input channels, got 1"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "floating-point"),
    ],
)
def test_retinaface_rejects_bad_input(x, error, match):
    with pytest.raises(error, match=match):
        R.retinaface()(x)


@pytest.mark.parametrize("shape", [(1, 3, 128, 128), (1, 1, 112, 112), (1, 128, 128), (2, 1, 128, 64)])
def test_arcface_rejects_anything_but_nx1x128x128(shape):
    with pytest.raises(ValueError, match=r"\[N, 1, 128, 128\]"):
        R.arcface()(torch.randn(shape))


def test_ssh_rejects_wrong_channels_and_rank():
    with pytest.raises(ValueError, match="expects 16 input channels, got 8"):
        R.SSH(16, 16)(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="4-D"):
        R.SSH(16, 16)(torch.randn(16, 4, 4))


def test_unknown_configs_are_rejected():
    with pytest.raises(ValueError, match="unknown network_name"):
        R.RetinaFace("mobilenet")
    with pytest.raises(ValueError, match="unknown block"):
        R.ResNetArcFace("IRBlok")
