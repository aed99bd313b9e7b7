"""Reading images of every Pillow mode: real files written by Pillow, read as ``detect``/``embed`` read them."""

import numpy as np
import pytest
from PIL import Image

from fused.apps import files

H, W = 40, 48
RAMP = np.linspace(0, 1, H * W).reshape(H, W)  # 0 .. 1 across the image


def loaded(path):
    """The full-size RGB array ``detect`` would see for the file at ``path``."""
    [item] = files.find_images([path])
    files.read_size(item, None)
    assert item.error is None, item.error
    full, scaled = files.load(item)
    assert full.dtype == np.uint8 and full.shape == (H, W, 3) and scaled is full
    return full


def expected_gray(values):
    """What an 8-bit reading of a 0..1 ``values`` ramp must give, on all three channels."""
    gray = np.rint(values * 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


@pytest.mark.parametrize("mode, fmt", [("I;16", "png"), ("I;16", "tif"), ("I;16B", "tif")])
def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path, mode, fmt):
    values = np.rint(RAMP * 65535).astype(np.uint16)
    path = tmp_path / f"sixteen.{fmt}"
    image = (Image.frombytes(mode, (W, H), values.astype(">u2").tobytes()) if mode == "I;16B"
             else Image.fromarray(values.astype("<u2")))
    assert image.mode == mode
    image.save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I;16")
    full = loaded(path)
    np.testing.assert_array_equal(full, expected_gray(values / 65535))
    assert abs(full.mean() - 127.5) < 1  # convert("RGB") clipped it to a white image (mean ~254)


def test_sixteen_bit_pgm_opened_as_mode_i(tmp_path):
    values = np.rint(RAMP * 65535).astype(">u2")
    path = tmp_path / "sixteen.pgm"
    path.write_bytes(f"P5 {W} {H} 65535\n".encode() + values.tobytes())
    with Image.open(path) as check:
        assert check.mode == "I"
    np.testing.assert_array_equal(loaded(path), expected_gray(values.astype(float) / 65535))


def test_float_tiff_in_zero_to_one(tmp_path):
    values = RAMP.astype(np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    full = loaded(path)
    np.testing.assert_array_equal(full, expected_gray(values.astype(np.float64)))
    assert full.max() == 255  # convert("RGB") turned 0..1 into a black image


@pytest.mark.parametrize("values, found", [
    (RAMP * 255, "values from 0 to 255"),
    (RAMP - 0.5, "values from -0.5 to 0.5"),
    (np.where(RAMP > 0.5, np.nan, RAMP), "NaN or infinite"),
])
def test_float_tiff_out_of_range_is_refused(tmp_path, values, found):
    path = tmp_path / "float.tif"
    Image.fromarray(values.astype(np.float32)).save(path)
    [item] = files.find_images([path])
    files.read_size(item, None)
    with pytest.raises(ValueError, match=rf"mode 'F'.*{found}.*0\.\.1.*Rescale"):
        files.load(item)


def test_wide_integer_tiff_is_refused(tmp_path):
    path = tmp_path / "wide.tif"
    Image.fromarray((RAMP * 200000).astype(np.int32)).save(path)
    [item] = files.find_images([path])
    files.read_size(item, None)
    with pytest.raises(ValueError, match=r"mode 'I'.*0 to 200000.*16-bit"):
        files.load(item)


def test_integer_tiff_within_sixteen_bits(tmp_path):
    values = np.rint(RAMP * 65535).astype(np.int32)
    path = tmp_path / "int.tif"
    Image.fromarray(values).save(path)
    np.testing.assert_array_equal(loaded(path), expected_gray(values / 65535))


def test_48_bit_rgb_png(tmp_path):
    """Pillow opens 48-bit RGB PNGs as 8-bit RGB (the high bytes): they keep working."""
    import struct
    import zlib

    rgb = np.stack([RAMP, 1 - RAMP, np.full_like(RAMP, 0.5)], axis=2)
    values = np.rint(rgb * 65535).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in values)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path = tmp_path / "deep.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    full = loaded(path)
    np.testing.assert_array_equal(full, (values >> 8).astype(np.uint8))


@pytest.mark.parametrize("mode, fmt", [
    ("1", "png"), ("L", "png"), ("P", "png"), ("LA", "png"), ("RGBA", "png"), ("CMYK", "tif"),
    ("YCbCr", "tif"), ("LAB", "tif"), ("PA", "tif"), ("RGB", "tif"),
])
def test_eight_bit_modes_match_pillows_conversion(tmp_path, mode, fmt):
    rgb = (np.stack([RAMP, 1 - RAMP, RAMP ** 2], axis=2) * 255).astype(np.uint8)
    source = Image.fromarray(rgb).convert(mode)
    path = tmp_path / f"eight.{fmt}"
    source.save(path)
    with Image.open(path) as check:
        assert check.mode == mode
        want = np.asarray(check.convert("RGB"))
    np.testing.assert_array_equal(loaded(path), want)
