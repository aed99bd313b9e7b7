"""The identity pipeline: crops, ResNetArcFace's grayscale input, embeddings, cosine similarity."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import reference
from reference.identity import arcface_input, cosine_similarity, crop_faces, embed


def random_image(seed, height=20, width=30):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# -- arcface_input -------------------------------------------------------------------------------


@pytest.mark.parametrize("channel, weight", [(0, 0.2989), (1, 0.5870), (2, 0.1140)])
def test_grayscale_weights(channel, weight):
    # 127.5 maps to 0 in [-1, 1] and 255 to 1: a pure red/green/blue image there.
    rgb = np.full((9, 7, 3), 127.5, dtype=np.float32)
    rgb[..., channel] = 255
    expected = torch.full((1, 1, 128, 128), weight)
    torch.testing.assert_close(arcface_input(rgb, channel_order="rgb"), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(arcface_input(rgb[..., ::-1]), expected, rtol=0, atol=1e-6)  # as BGR


def test_arcface_input_is_the_spec_formula():
    bgr = random_image(0)
    rgb = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float() / 127.5 - 1
    gray = 0.2989 * rgb[0] + 0.5870 * rgb[1] + 0.1140 * rgb[2]
    expected = F.interpolate(gray[None, None], size=(128, 128), mode="bilinear", align_corners=False)
    assert torch.equal(arcface_input(bgr), expected)


def test_arcface_input_shapes_and_sources():
    from PIL import Image

    faces = [random_image(1, 40, 30), torch.from_numpy(random_image(2, 128, 128)).permute(2, 0, 1), Image.new("RGB", (5, 9))]
    x = arcface_input(faces, dtype=torch.float16)
    assert x.shape == (3, 1, 128, 128) and x.dtype == torch.float16
    assert torch.equal(x[0], arcface_input(faces[0]).half()[0])
    batch = torch.rand(4, 3, 50, 60) * 255
    assert arcface_input(batch).shape == (4, 1, 128, 128)
    assert arcface_input(batch[:0]).shape == (0, 1, 128, 128)
    assert arcface_input([]).shape == (0, 1, 128, 128) and arcface_input(()).dtype == torch.float32
    assert torch.equal(arcface_input(batch, channel_order="rgb"), arcface_input(batch.flip(1)))


@pytest.mark.parametrize(
    "faces, kwargs, error, match",
    [
        (random_image(0), {"channel_order": "RGB"}, ValueError, "channel_order must be 'bgr' or 'rgb'"),
        (random_image(0).astype(np.int32), {}, TypeError, "dtype int32"),
        (np.zeros((0, 4, 3), np.uint8), {}, ValueError, "empty image"),
        (torch.zeros(1, 4, 4), {}, ValueError, r"\[3, H, W\]"),
        ([[1, 2, 3]], {}, TypeError, "got list"),
    ],
)
def test_arcface_input_rejects_bad_input(faces, kwargs, error, match):
    with pytest.raises(error, match=match):
        arcface_input(faces, **kwargs)


# -- crop_faces ------------------------------------------------------------------------------------


def test_crop_rounds_outward_and_clamps():
    bgr = random_image(3)  # 20 x 30
    boxes = torch.tensor([[-5.5, 2.2, 10.7, 50.0], [3.0, 4.0, 5.0, 6.0], [28.1, 0.0, 40.0, 0.5]])
    crops = crop_faces(bgr, boxes)
    chw = torch.from_numpy(bgr).permute(2, 0, 1).float()  # crops keep the input's channel order
    assert torch.equal(crops[0], chw[:, 2:20, 0:11])
    assert torch.equal(crops[1], chw[:, 4:6, 3:5])
    assert torch.equal(crops[2], chw[:, 0:1, 28:30])
    assert crop_faces(bgr, boxes[:0]) == []


def test_crop_channel_orders_and_copies():
    from PIL import Image

    rgb = random_image(4)
    box = [[0, 0, 30, 20]]
    (from_pil,) = crop_faces(Image.fromarray(rgb), box, channel_order="rgb")
    assert torch.equal(from_pil, torch.from_numpy(rgb).permute(2, 0, 1).float())
    (as_bgr,) = crop_faces(Image.fromarray(rgb), box)  # PIL is RGB; the crop comes back in BGR
    assert torch.equal(as_bgr, from_pil.flip(0))
    image = torch.rand(3, 20, 30) * 255
    (crop,) = crop_faces(image, box, channel_order="rgb")
    crop.zero_()
    assert image.abs().sum() > 0  # a copy, not a view of the input


@pytest.mark.parametrize(
    "box, match",
    [
        ([5.0, 5.0, 5.0, 9.0], r"box 0 \(5.0, 5.0, 5.0, 9.0\) has no area"),
        ([9.0, 5.0, 5.0, 9.0], "has no area"),
        ([31.0, 5.0, 40.0, 9.0], "lies outside the 20x30 image"),
        ([-9.0, -9.0, -1.0, -1.0], "lies outside"),
        ([float("nan"), 5.0, 9.0, 9.0], "is not finite"),
    ],
)
def test_crop_rejects_bad_boxes(box, match):
    with pytest.raises(ValueError, match=match):
        crop_faces(random_image(0), [box])


def test_crop_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"boxes must have shape \[k, 4\]"):
        crop_faces(random_image(0), [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="takes one image"):
        crop_faces(torch.zeros(2, 3, 8, 8), [[0, 0, 4, 4]])


# -- embed ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def identity_model():
    return reference.arcface()


def test_embed(identity_model):
    image = random_image(5, 64, 48)
    faces = crop_faces(image, [[0, 0, 48, 64], [10, 10, 40, 50]])
    e = embed(identity_model, faces)
    assert e.shape == (2, 512) and e.dtype == torch.float32 and not e.is_inference()
    with torch.inference_mode():
        torch.testing.assert_close(e, identity_model(arcface_input(faces)))
    torch.testing.assert_close(embed(identity_model, faces[1])[0], e[1])
    with pytest.raises(ValueError, match=r"training mode; call model.eval\(\)"):
        embed(reference.ResNetArcFace("IRBlock", (2, 2, 2, 2), use_se=False), faces)


def test_no_faces_embed_to_an_empty_result(identity_model):
    """An image where nothing was detected: crop_faces gives [], embed [0, 512], similarity [0, 0]."""
    crops = crop_faces(random_image(5, 64, 48), torch.empty(0, 4))
    assert crops == []
    e = embed(identity_model, crops)
    assert e.shape == (0, 512) and e.dtype == torch.float32
    assert cosine_similarity(e).shape == (0, 0)


# -- cosine_similarity -------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6), d=st.sampled_from([1, 3, 512]),
       dtype=st.sampled_from([torch.float16, torch.float32, torch.float64]))
def test_cosine_similarity_properties(seed, n, d, dtype):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(n, d, generator=g) * 10).to(dtype)
    s = cosine_similarity(a)
    assert s.shape == (n, n) and s.dtype == torch.promote_types(dtype, torch.float32)
    assert bool((s.abs() <= 1).all()) and torch.equal(s, s.T)
    torch.testing.assert_close(s.diagonal(), torch.ones(n, dtype=s.dtype))
    b = torch.randn(n + 1, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(cosine_similarity(a, b), F.cosine_similarity(a.double()[:, None], b[None], dim=-1))


def test_cosine_similarity_zero_vectors_and_shapes():
    a = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    s = cosine_similarity(a)
    assert torch.equal(s, torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    assert cosine_similarity(a[1], a).shape == (1, 2)
    with pytest.raises(ValueError, match="different sizes"):
        cosine_similarity(a, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="floating-point tensor of embeddings"):
        cosine_similarity(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \[N, D\]"):
        cosine_similarity(torch.zeros(2, 2, 2))
