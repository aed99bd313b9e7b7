"""The detection pipeline: priors, box coding, NMS, input preparation, postprocessing, detect()."""

import importlib
import math
import struct
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fused
import reference
from fused.tolerance import reduction_length
from reference.box_coding import decode_boxes, decode_landmarks, encode_boxes, encode_landmarks
from reference.detection import Detections, detect, postprocess, prepare_images
from reference.nms import batched_nms, box_iou, nms
from reference.priors import priors
from reference.retinaface import MIN_SIZES, STEPS

nms_module = importlib.import_module("reference.nms")  # `reference.nms` the attribute is the function

# -- priors -----------------------------------------------------------------------------------


def loop_priors(height, width):
    """The spec's formula, as a plain triple loop in Python floats."""
    out = []
    for min_sizes, step in zip(MIN_SIZES, STEPS):
        for i in range(math.ceil(height / step)):
            for j in range(math.ceil(width / step)):
                for m in min_sizes:
                    out.append([(j + 0.5) * step / width, (i + 0.5) * step / height, m / width, m / height])
    return out


@pytest.mark.parametrize("height, width", [(65, 33), (64, 64), (100, 75), (1, 1), (17, 200)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_priors_equal_the_spec_loop(height, width, dtype):
    p = priors(height, width, dtype=dtype)
    assert p.shape == (reference.num_priors(height, width), 4) and p.dtype == dtype
    assert torch.equal(p, torch.tensor(loop_priors(height, width), dtype=dtype))


def test_priors_are_cached_per_key():
    assert priors(64, 48) is priors(64, 48) is priors(64, 48, device="cpu")
    assert priors(np.int64(64), 48) is priors(64, 48)
    assert priors(64, 48, dtype=torch.float64) is not priors(64, 48)
    with pytest.raises(TypeError, match="floating-point"):
        priors(64, 48, dtype=torch.int64)
    with torch.inference_mode():
        assert not priors(32, 40).is_inference()  # safe to reuse later in autograd


@pytest.mark.parametrize("bad", [0, -8, 1.5, True, "64"])
def test_priors_reject_bad_sizes(bad):
    with pytest.raises(ValueError, match="height must be a positive int"):
        priors(bad, 64)
    with pytest.raises(ValueError, match="width must be a positive int"):
        priors(64, bad)


# -- box coding ---------------------------------------------------------------------------------

PRIOR = torch.tensor([[0.5, 0.5, 0.2, 0.4]], dtype=torch.float64)


def test_decode_boxes_by_hand():
    loc = torch.tensor([[1.0, -2.0, 0.5, 0.0]], dtype=torch.float64)
    # centre (0.5 + 1*0.1*0.2, 0.5 - 2*0.1*0.4) = (0.52, 0.42); size (0.2*exp(0.1), 0.4*exp(0)).
    w = 0.2 * math.exp(0.1)  # 0.221034183...
    expected = [[0.52 - w / 2, 0.42 - 0.2, 0.52 + w / 2, 0.42 + 0.2]]  # (0.40948, 0.22, 0.63052, 0.62)
    torch.testing.assert_close(decode_boxes(loc, PRIOR), torch.tensor(expected, dtype=torch.float64))


def test_decode_landmarks_by_hand():
    pre = torch.tensor([[1.0, 0.0, 0.0, 1.0, -1.0, -1.0, 2.0, 3.0, 0.0, 0.0]], dtype=torch.float64)
    # point k = (0.5 + dx*0.1*0.2, 0.5 + dy*0.1*0.4)
    expected = [[0.52, 0.5, 0.5, 0.54, 0.48, 0.46, 0.54, 0.62, 0.5, 0.5]]
    torch.testing.assert_close(decode_landmarks(pre, PRIOR), torch.tensor(expected, dtype=torch.float64))


def random_priors(g, p):
    centres = torch.rand(p, 2, generator=g, dtype=torch.float64)
    sizes = torch.rand(p, 2, generator=g, dtype=torch.float64) * 0.9 + 0.05
    return torch.cat([centres, sizes], dim=1)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3), p=st.integers(1, 20))
def test_box_coding_round_trips(seed, n, p):
    g = torch.Generator().manual_seed(seed)
    anchors = random_priors(g, p)
    loc = torch.randn(n, p, 4, generator=g, dtype=torch.float64) * 2
    torch.testing.assert_close(encode_boxes(decode_boxes(loc, anchors), anchors), loc)
    top_left = torch.rand(n, p, 2, generator=g, dtype=torch.float64)
    boxes = torch.cat([top_left, top_left + torch.rand(n, p, 2, generator=g, dtype=torch.float64) + 0.01], -1)
    torch.testing.assert_close(decode_boxes(encode_boxes(boxes, anchors), anchors), boxes)
    ldm = torch.randn(n, p, 10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(encode_landmarks(decode_landmarks(ldm, anchors), anchors), ldm)
    torch.testing.assert_close(decode_landmarks(encode_landmarks(ldm, anchors), anchors), ldm)


def test_box_coding_rejects_bad_shapes():
    with pytest.raises(ValueError, match="loc must have 4 values"):
        decode_boxes(torch.zeros(3, 5), PRIOR)
    with pytest.raises(ValueError, match="priors must have 4 values"):
        decode_boxes(torch.zeros(3, 4), torch.zeros(3, 2))
    with pytest.raises(TypeError, match="floating-point"):
        decode_landmarks(torch.zeros(3, 10, dtype=torch.long), PRIOR)


# -- NMS ------------------------------------------------------------------------------------------


def to_float32(v: float) -> float:
    return struct.unpack("f", struct.pack("f", v))[0]


def naive_nms(boxes, scores, threshold, rnd):
    """Greedy NMS in Python floats; ``rnd`` rounds every operation to the boxes' dtype."""

    def area(b):
        return rnd(rnd(b[2] - b[0]) * rnd(b[3] - b[1]))

    def iou(p, q):
        w = max(0.0, rnd(min(p[2], q[2]) - max(p[0], q[0])))
        h = max(0.0, rnd(min(p[3], q[3]) - max(p[1], q[1])))
        inter = rnd(w * h)
        union = rnd(rnd(area(p) + area(q)) - inter)
        return rnd(inter / union) if union != 0 else math.nan

    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties by lower index
    kept = []
    for i in order:
        if all(not iou(boxes[k], boxes[i]) > threshold for k in kept):
            kept.append(i)
    return kept


THRESHOLDS = st.one_of(st.sampled_from([0.0, 0.25, 1 / 3, 0.4, 0.5, 0.7, 1.0]), st.floats(0, 1))
GRID_BOX = st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(-2, 6), st.integers(-2, 6)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3])  # width/height may be 0 or negative
)
FLOAT_BOX = st.tuples(*[st.floats(0, 10, width=32)] * 2, *[st.floats(0.125, 5, width=32)] * 2).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3])
)


@given(
    boxes=st.one_of(st.lists(GRID_BOX, max_size=25), st.lists(FLOAT_BOX, max_size=25)),
    data=st.data(),
    threshold=THRESHOLDS,
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_nms_matches_naive_greedy(boxes, data, threshold, dtype):
    # Few distinct scores, so that ties (broken by the lower index) are common.
    scores = data.draw(st.lists(st.sampled_from([0.1, 0.5, 0.9, 0.25]), min_size=len(boxes), max_size=len(boxes)))
    b = torch.tensor(boxes, dtype=dtype).reshape(-1, 4)
    s = torch.tensor(scores, dtype=dtype)
    rnd = to_float32 if dtype == torch.float32 else float
    keep = nms(b, s, threshold)
    assert keep.dtype == torch.long
    assert keep.tolist() == naive_nms(b.tolist(), s.tolist(), threshold, rnd)


@given(
    boxes=st.lists(GRID_BOX, max_size=40),
    data=st.data(),
    threshold=THRESHOLDS,
    pairs=st.integers(1, 60),
)
def test_nms_in_small_chunks_matches_naive_greedy(boxes, data, threshold, pairs):
    # Chunks of a few rows (one row when pairs < K): suppression must carry across chunks.
    scores = data.draw(st.lists(st.sampled_from([0.1, 0.5, 0.9, 0.25]), min_size=len(boxes), max_size=len(boxes)))
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    s = torch.tensor(scores, dtype=torch.float32)
    with mock.patch.object(nms_module, "PAIRS_PER_CHUNK", pairs):
        keep = nms(b, s, threshold)
    assert keep.tolist() == naive_nms(b.tolist(), s.tolist(), threshold, to_float32)


def full_matrix_nms(boxes, scores, threshold):
    """Greedy NMS over the whole IoU matrix at once (what nms did before it was chunked)."""
    order = torch.sort(scores, stable=True, descending=True).indices
    over = (box_iou(boxes[order], boxes[order]).double() > threshold).numpy()
    suppressed, kept = np.zeros(len(order), dtype=bool), []
    for rank in range(len(order)):
        if not suppressed[rank]:
            kept.append(rank)
            suppressed[rank + 1:] |= over[rank, rank + 1:]
    return order[kept]


@pytest.mark.parametrize("count, pairs", [(3000, None), (300, 8)])
def test_nms_memory_is_bounded(monkeypatch, count, pairs):
    # Clustered boxes, like a detector's candidates: many overlap, many are suppressed.
    g = torch.Generator().manual_seed(count)
    centres = (torch.rand(30, 2, generator=g) * 600)[torch.randint(0, 30, (count,), generator=g)]
    centres = centres + torch.randn(count, 2, generator=g) * 8
    size = torch.rand(count, 1, generator=g) * 40 + 20
    boxes, scores = torch.cat([centres - size / 2, centres + size / 2], 1), torch.rand(count, generator=g)
    if pairs is not None:
        monkeypatch.setattr(nms_module, "PAIRS_PER_CHUNK", pairs)
    sizes = []

    def recording_box_iou(a, b):
        sizes.append((len(a), len(b)))
        return box_iou(a, b)

    monkeypatch.setattr(nms_module, "box_iou", recording_box_iou)
    assert torch.equal(nms(boxes, scores, 0.4), full_matrix_nms(boxes, scores, 0.4))
    assert sizes and all(rows * cols <= max(nms_module.PAIRS_PER_CHUNK, cols) for rows, cols in sizes)


def test_nms_rejects_a_nan_threshold():
    with pytest.raises(ValueError, match="iou_threshold is NaN"):
        nms(torch.zeros(3, 4), torch.zeros(3), math.nan)


def test_nms_compares_float32_iou_as_double():
    # IoU 4/10 rounds to 0.4000000059604645 in float32, which is > 0.4 (as in torchvision's kernel).
    boxes = [[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 4.0, 1.0]]
    scores = torch.tensor([0.9, 0.8])
    assert nms(torch.tensor(boxes), scores, 0.4).tolist() == [0]
    assert nms(torch.tensor(boxes, dtype=torch.float64), scores.double(), 0.4).tolist() == [0, 1]


def test_nms_special_cases():
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.long
    nested = torch.tensor([[0.0, 0, 10, 10], [0, 0, 9, 9], [1, 1, 10, 10], [0.5, 0.5, 9.5, 9.5]])
    assert nms(nested, torch.tensor([0.2, 0.9, 0.3, 0.5]), 0.5).tolist() == [1]
    same = torch.tensor([[1.0, 1, 5, 5]] * 4)
    assert nms(same, torch.tensor([0.5, 0.7, 0.7, 0.1]), 0.5).tolist() == [1]  # tie: lower index
    assert nms(same, torch.ones(4), 1.0).tolist() == [0, 1, 2, 3]  # IoU 1 is not > 1
    degenerate = torch.tensor([[5.0, 5, 5, 9], [5, 5, 9, 5], [9, 9, 5, 5], [5, 5, 9, 9]])
    assert nms(degenerate, torch.tensor([0.9, 0.8, 0.7, 0.6]), 0.0).tolist() == [0, 1, 2, 3]
    touching = torch.tensor([[0.0, 0, 1, 1], [1, 0, 2, 1]])
    assert nms(touching, torch.tensor([0.9, 0.8]), 0.0).tolist() == [0, 1]


def test_box_iou_by_hand():
    a = torch.tensor([[0.0, 0, 2, 2], [1, 1, 1, 1]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1, 3, 3], [5, 5, 5, 6]], dtype=torch.float64)
    iou = box_iou(a, b)
    assert iou.shape == (2, 2)
    # inter 1, union 4 + 4 - 1; then disjoint; a zero-area box: 0 / 4 and 0 / 0
    assert iou[0].tolist() == [1 / 7, 0.0] and iou[1, 0] == 0 and math.isnan(iou[1, 1])


def test_nms_rejects_bad_input():
    with pytest.raises(ValueError, match=r"shape \[K, 4\]"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="one per box"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        nms(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3), 0.5)
    with pytest.raises(TypeError, match="iou_threshold must be a number"):
        nms(torch.zeros(3, 4), torch.zeros(3), "0.5")
    with pytest.raises(TypeError, match="idxs must be an integer tensor"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5)


@given(
    boxes=st.lists(GRID_BOX.map(lambda b: tuple(v - 4 for v in b)), max_size=25),  # negative coordinates too
    data=st.data(),
    threshold=THRESHOLDS,
)
def test_batched_nms_groups_never_interact(boxes, data, threshold):
    n = len(boxes)
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    s = torch.tensor(data.draw(st.lists(st.sampled_from([0.1, 0.5, 0.9]), min_size=n, max_size=n)))
    idxs = torch.tensor(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=torch.long)
    expected = []
    for group in idxs.unique().tolist():
        members = torch.nonzero(idxs == group).squeeze(1)
        expected += members[nms(b[members], s[members], threshold)].tolist()
    expected.sort(key=lambda i: (-s[i].item(), i))
    assert batched_nms(b, s, idxs, threshold).tolist() == expected


def test_batched_nms_keeps_identical_boxes_of_different_groups():
    boxes = torch.tensor([[-3.0, -3, 2, 2]] * 3)
    assert batched_nms(boxes, torch.tensor([0.5, 0.9, 0.7]), torch.tensor([2, 0, 1]), 0.1).tolist() == [1, 2, 0]


# -- prepare_images -------------------------------------------------------------------------------

MEAN = torch.tensor([104.0, 117.0, 123.0])[:, None, None]


def random_image(seed, height=6, width=5):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_prepare_numpy_bgr_is_the_formula():
    bgr = random_image(0)
    expected = torch.from_numpy(bgr).permute(2, 0, 1).float() - MEAN
    x = prepare_images(bgr)
    assert x.shape == (1, 3, 6, 5) and x.dtype == torch.float32
    assert torch.equal(x[0], expected)


def test_prepare_channel_orders_pil_and_tensors_agree():
    bgr = random_image(1)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    x = prepare_images(bgr)
    assert torch.equal(prepare_images(bgr[..., ::-1], channel_order="rgb"), x)  # negative strides are fine
    assert torch.equal(prepare_images(rgb.astype(np.float64), channel_order="rgb"), x)
    from PIL import Image

    pil = Image.fromarray(rgb)
    assert torch.equal(prepare_images(pil), x) and torch.equal(prepare_images(pil, channel_order="rgb"), x)
    chw = torch.from_numpy(bgr).permute(2, 0, 1)
    assert torch.equal(prepare_images(chw), x)
    assert torch.equal(prepare_images(chw.float()[None].expand(2, -1, -1, -1)), x.expand(2, -1, -1, -1))
    assert torch.equal(prepare_images([bgr, pil, chw]), x.expand(3, -1, -1, -1))
    assert torch.equal(prepare_images((bgr, chw), dtype=torch.float64), x.double().expand(2, -1, -1, -1))
    assert prepare_images(bgr, dtype=torch.float16).dtype == torch.float16
    nan = bgr.astype(np.float32)
    nan[0, 0, 0] = np.nan
    assert torch.isnan(prepare_images(nan)[0, 0, 0, 0])  # NaN passes through (blue stays channel 0)


def test_prepare_batch_of_different_images():
    a, b = random_image(2), random_image(3)
    assert torch.equal(prepare_images([a, b]), torch.cat([prepare_images(a), prepare_images(b)]))


@pytest.mark.parametrize(
    "images, kwargs, error, match",
    [
        (random_image(0), {"channel_order": "BGR"}, ValueError, "channel_order must be 'bgr' or 'rgb'"),
        (random_image(0), {"channel_order": "gbr"}, ValueError, "channel_order"),
        (random_image(0).astype(bool), {}, TypeError, "dtype bool"),
        (random_image(0).astype(np.int64), {}, TypeError, "dtype int64"),
        (torch.zeros(3, 4, 4, dtype=torch.int32), {}, TypeError, "torch.int32; use uint8"),
        (torch.zeros(3, 4, 4, dtype=torch.complex64), {}, TypeError, "complex64"),
        (np.zeros((4, 4, 4), np.uint8), {}, ValueError, "H x W x 3"),
        (np.zeros((4, 4), np.uint8), {}, ValueError, "H x W x 3"),
        (torch.zeros(4, 5, 5), {}, ValueError, r"\[3, H, W\] or \[N, 3, H, W\]"),
        (torch.zeros(5, 5), {}, ValueError, r"\[3, H, W\]"),
        (np.zeros((0, 5, 3), np.uint8), {}, ValueError, "empty image: height 0"),
        (torch.zeros(3, 4, 0), {}, ValueError, "empty image"),
        ([], {}, ValueError, "empty list of images"),
        ([random_image(0), random_image(0, 7, 5)], {}, ValueError, r"one size.*\(6, 5\), \(7, 5\).*once per size"),
        ([torch.zeros(2, 3, 4, 4)], {}, ValueError, "list items must be single images"),
        ("image.png", {}, TypeError, "expected a NumPy array, a PIL image or a torch tensor, got str"),
        (random_image(0), {"dtype": torch.int32}, TypeError, "dtype must be a floating-point"),
    ],
)
def test_prepare_rejects_bad_input(images, kwargs, error, match):
    with pytest.raises(error, match=match):
        prepare_images(images, **kwargs)


def test_prepare_rejects_non_rgb_pil():
    from PIL import Image

    with pytest.raises(ValueError, match=r"mode 'L'.*convert\('RGB'\)"):
        prepare_images(Image.new("L", (4, 4)))


# -- postprocess ---------------------------------------------------------------------------------


def fake_outputs(height, width, face_scores):
    """Zero offsets (every box is its prior) and the given face scores per prior."""
    p = reference.num_priors(height, width)
    face = torch.zeros(1, p)
    for index, score in face_scores.items():
        face[0, index] = score
    return torch.zeros(1, p, 4), torch.stack([1 - face, face], dim=-1), torch.zeros(1, p, 10)


def test_postprocess_returns_priors_in_pixels():
    loc, conf, landms = fake_outputs(32, 48, {0: 0.95, 5: 0.85, 7: 0.8})
    (dets,) = postprocess(loc, conf, landms, 32, 48)
    anchors = priors(32, 48)[[0, 5]]  # 0.8 is not above the threshold 0.8
    scale = torch.tensor([48.0, 32.0])
    centre, size = anchors[:, :2] * scale, anchors[:, 2:] * scale
    torch.testing.assert_close(dets.boxes, torch.cat([centre - size / 2, centre + size / 2], dim=1))
    torch.testing.assert_close(dets.landmarks, centre[:, None, :].expand(2, 5, 2))
    assert dets.scores.tolist() == pytest.approx([0.95, 0.85]) and len(dets) == 2


def test_postprocess_limits_and_half_outputs():
    # The 16-pixel anchors of the 8x8 cells of stride 8: neighbours overlap with IoU 1/3.
    loc, conf, landms = fake_outputs(64, 64, {i: 0.9 for i in range(0, 128, 2)})
    assert len(postprocess(loc, conf, landms, 64, 64, top_k=3, iou_threshold=1.0)[0]) == 3
    assert len(postprocess(loc, conf, landms, 64, 64, keep_top_k=2, iou_threshold=1.0)[0]) == 2
    half = postprocess(loc.half(), conf.half(), landms.half(), 64, 64)[0]
    full = postprocess(loc, conf, landms, 64, 64)[0]
    assert half.boxes.dtype == torch.float32 and len(half) == len(full) > 0


def test_postprocess_rejects_mismatched_outputs():
    loc, conf, landms = fake_outputs(32, 32, {})
    with pytest.raises(ValueError, match="predicted 42 priors but a 64x32 input has 84"):
        postprocess(loc, conf, landms, 64, 32)
    with pytest.raises(ValueError, match=r"scores output must have shape \[N, P, 2\]"):
        postprocess(loc, conf[..., :1], landms, 32, 32)
    with pytest.raises(ValueError, match="landmarks output has shape"):
        postprocess(loc, conf, landms[:, :-1], 32, 32)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        postprocess(loc, conf, landms, 32, 32, top_k=0)


# -- detect --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector():
    return reference.retinaface("mobile0.25")


def check_detections(dets: Detections, conf: float):
    k = len(dets)
    assert dets.boxes.shape == (k, 4) and dets.scores.shape == (k,) and dets.landmarks.shape == (k, 5, 2)
    assert k > 0 and bool((dets.scores > conf).all())
    assert torch.equal(dets.scores, dets.scores.sort(descending=True).values)
    assert bool((dets.boxes[:, 2:] > dets.boxes[:, :2]).all())
    assert bool(dets.boxes.isfinite().all()) and float(dets.boxes.abs().max()) < 4096  # anchors are <= 512 px


def test_detect_shapes(detector):
    (dets,) = detect(detector, random_image(4, 48, 64), conf=0.3)
    check_detections(dets, 0.3)
    boxes, scores, landmarks = dets.numpy()
    assert boxes.shape == (len(dets), 4) and scores.dtype == np.float32 and landmarks.shape[1:] == (5, 2)
    assert torch.equal(dets.to("cpu").boxes, dets.boxes)
    dets.boxes += 1  # ordinary tensors, not inference tensors


def test_detect_batch_equals_single_calls(detector):
    a, b = random_image(5, 48, 64), random_image(6, 48, 64)
    batched = detect(detector, [a, b, a], conf=0.3)
    singles = [detect(detector, image, conf=0.3)[0] for image in (a, b, a)]
    assert len(batched) == 3
    for got, want in zip(batched, singles):
        assert len(got) == len(want)
        for field in ("boxes", "scores", "landmarks"):
            torch.testing.assert_close(getattr(got, field), getattr(want, field))


def test_detect_rejects_train_phase_and_training_mode(detector):
    image = random_image(0, 32, 32)
    with pytest.raises(ValueError, match="phase 'test'.*got phase 'train'"):
        detect(reference.RetinaFace("mobile0.25", phase="train").eval(), image)
    with pytest.raises(ValueError, match=r"training mode; call model.eval\(\)"):
        detect(reference.RetinaFace("mobile0.25"), image)


class MustNotRun(torch.nn.Module):
    """A RetinaFace stand-in (phase "test", eval mode, one parameter) whose forward fails the test."""

    phase = "test"

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.eval()

    def forward(self, x):
        raise AssertionError("the model ran although the arguments were bad")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"conf": math.nan}, r"conf must be a number in \[0, 1\], got nan"),
        ({"conf": -0.1}, r"conf must be a number in \[0, 1\]"),
        ({"conf": 80}, r"conf must be a number in \[0, 1\], got 80; for 80% give 0.8"),
        ({"conf": "0.8"}, "conf must be a number"),
        ({"conf": True}, "conf must be a number"),
        ({"iou": math.nan}, r"iou must be a number in \[0, 1\], got nan"),
        ({"iou": 1.5}, "iou must be a number"),
        ({"iou": None}, "iou must be a number"),
        ({"top_k": 0}, "top_k must be a positive int, got 0"),
        ({"top_k": 10.0}, "top_k must be a positive int"),
        ({"top_k": True}, "top_k must be a positive int"),
        ({"keep_top_k": -1}, "keep_top_k must be a positive int"),
        ({"keep_top_k": None}, "keep_top_k must be a positive int"),
    ],
)
def test_detect_checks_its_arguments_before_the_model_runs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        detect(MustNotRun(), random_image(0, 32, 32), **kwargs)


def test_postprocess_checks_thresholds_and_takes_numpy_numbers():
    loc, conf, landms = fake_outputs(64, 64, {i: 0.9 for i in range(0, 128, 2)})
    with pytest.raises(ValueError, match=r"iou_threshold must be a number in \[0, 1\], got nan"):
        postprocess(loc, conf, landms, 64, 64, iou_threshold=math.nan)
    with pytest.raises(ValueError, match=r"conf_threshold must be a number in \[0, 1\], got 1.5"):
        postprocess(loc, conf, landms, 64, 64, conf_threshold=1.5)
    (dets,) = postprocess(loc, conf, landms, 64, 64, conf_threshold=np.float32(0.5), iou_threshold=np.float64(1.0),
                          top_k=np.int64(3), keep_top_k=np.int32(2))
    assert len(dets) == 2


@pytest.mark.parametrize("scale", [1 / 255, 1 / 256])
def test_a_float_image_in_0_to_1_warns(scale):
    image = random_image(0).astype(np.float32) * scale
    with pytest.warns(UserWarning, match=r"expected in 0\.\.255.*multiply it by 255"):
        prepare_images(image)
    with pytest.warns(UserWarning, match="expected in 0..255"):
        reference.arcface_input([torch.from_numpy(image).permute(2, 0, 1)])


@pytest.mark.parametrize(
    "image",
    [
        random_image(0),  # uint8, even if dark
        np.ones((4, 4, 3), np.uint8),
        random_image(0).astype(np.float32),
        np.zeros((4, 4, 3), np.float32),  # black reads the same in both ranges
        np.full((4, 4, 3), np.nan, np.float32),
        np.full((4, 4, 3), 1.5, np.float32),
    ],
)
def test_images_in_0_to_255_do_not_warn(image):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_images(image)


def matched(a: Detections, b: Detections) -> Detections:
    """``a``'s detections reordered to ``b``'s order by nearest box (near-tied scores may swap)."""
    distance = (a.boxes[:, None, :] - b.boxes[None, :, :]).abs().amax(-1)
    order = distance.argmin(0)
    assert sorted(order.tolist()) == list(range(len(a))), "detections do not pair up one to one"
    return Detections(a.boxes[order], a.scores[order], a.landmarks[order])


def test_detect_is_the_same_with_fusion_on_and_off():
    # Built outside inference mode; BN given trained-like statistics so that a wrong fold shows.
    model = fused.fuse(reference.randomize_batchnorm(reference.retinaface("mobile0.25")))
    image = random_image(7, 64, 64)
    (on,) = detect(model, image, conf=0.3)
    with fused.enabled(False):
        (off,) = detect(model, image, conf=0.3)
    check_detections(off, 0.3)
    assert len(on) == len(off)
    # Not bitwise: the fused kernels fold BatchNorm into the weights and sum in another order, so
    # float32 results differ by rounding (about 1e-7 relative); the policy bounds that rounding.
    on = matched(on, off)
    for field in ("boxes", "scores", "landmarks"):
        expected = getattr(off, field)
        fused.assert_close(getattr(on, field), expected.double(), dtype=torch.float32,
                           reduction_length=reduction_length(model), what=field)
