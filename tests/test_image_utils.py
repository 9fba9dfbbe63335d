"""Image loading: every input kind and PIL mode becomes 8-bit RGB; bad inputs name the argument and index."""

import io
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from make_hf.image_utils import InvalidInputTypeError, load_image, load_images, to_rgb


RED = (200, 30, 40)


def solid(mode_color=RED, size=(6, 4)):
    return PIL.Image.new("RGB", size, mode_color)


def rgba_half_transparent():
    """Left column opaque red, right column fully transparent red, the rest half transparent."""
    image = PIL.Image.new("RGBA", (3, 2), RED + (128,))
    image.putpixel((0, 0), RED + (255,))
    image.putpixel((2, 0), RED + (0,))
    return image


def test_transparency_is_composited_on_white():
    rgb = to_rgb(rgba_half_transparent())
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == RED
    assert rgb.getpixel((2, 0)) == (255, 255, 255)
    half = rgb.getpixel((1, 0))
    assert all(abs(c - round((v * 128 + 255 * 127) / 255)) <= 1 for c, v in zip(half, RED))


def _palette_with_transparency():
    image = solid().convert("P")
    image.info["transparency"] = image.getpixel((0, 0))
    return image


def _int_image(mode, value):
    dtype = {"I;16": np.uint16, "I": np.int32}[mode]
    image = PIL.Image.fromarray(np.full((4, 6), value, dtype=dtype))
    assert image.mode == mode
    return image


@pytest.mark.parametrize(
    "make_image, expected",
    [
        (lambda: solid(), RED),
        (lambda: solid().convert("RGBA"), RED),
        (lambda: solid().convert("RGBA").convert("RGBa"), RED),
        (lambda: PIL.Image.new("LA", (6, 4), (90, 0)), (255, 255, 255)),
        (lambda: PIL.Image.new("LA", (6, 4), (90, 255)).convert("La"), (90, 90, 90)),
        (lambda: solid().convert("P"), None),
        (_palette_with_transparency, (255, 255, 255)),
        (lambda: solid().convert("P").convert("PA"), None),
        (lambda: PIL.Image.new("L", (6, 4), 77), (77, 77, 77)),
        (lambda: PIL.Image.new("1", (6, 4), 1), (255, 255, 255)),
        (lambda: PIL.Image.new("CMYK", (6, 4), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: solid().convert("YCbCr"), None),
        (lambda: solid().convert("HSV"), None),
        (lambda: solid().convert("LAB"), None),
        (lambda: _int_image("I;16", 65535), (255, 255, 255)),
        (lambda: _int_image("I;16", 257 * 100), (100, 100, 100)),
        (lambda: _int_image("I", 100), (100, 100, 100)),
        (lambda: _int_image("I", 257 * 50), (50, 50, 50)),
        (lambda: PIL.Image.new("F", (6, 4), 0.5), (128, 128, 128)),
        (lambda: PIL.Image.new("F", (6, 4), 200.0), (200, 200, 200)),
    ],
    ids=[
        "RGB", "RGBA", "RGBa", "LA-transparent", "La", "P", "P-transparency", "PA", "L", "1", "CMYK", "YCbCr",
        "HSV", "LAB", "I;16-max", "I;16", "I-8bit", "I-16bit", "F-unit", "F-255",
    ],
)  # fmt: skip
def test_every_pil_mode_becomes_rgb(make_image, expected):
    rgb = load_image(make_image())
    assert rgb.mode == "RGB" and rgb.size == (6, 4)
    pixel = rgb.getpixel((0, 0))
    # Lossy conversions (the web palette, YCbCr, HSV, LAB) land near the original red.
    target = expected or RED
    assert all(abs(a - b) <= (0 if expected else 24) for a, b in zip(pixel, target)), (pixel, target)


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((4, 6, 3), RED, dtype=np.uint8), RED),
        (np.full((3, 4, 6), 1, dtype=np.uint8) * np.array(RED, dtype=np.uint8)[:, None, None], RED),
        (np.full((4, 6), 77, dtype=np.uint8), (77, 77, 77)),
        (np.full((4, 6, 1), 77, dtype=np.uint8), (77, 77, 77)),
        (np.full((4, 6, 3), 0.5, dtype=np.float32), (128, 128, 128)),
        (np.full((4, 6, 3), 200.0, dtype=np.float64), (200, 200, 200)),
        (np.full((4, 6), 257 * 10, dtype=np.uint16), (10, 10, 10)),
        (np.ones((4, 6), dtype=bool), (255, 255, 255)),
        (np.full((4, 6, 4), (*RED, 0), dtype=np.uint8), (255, 255, 255)),
    ],
    ids=["HWC-uint8", "CHW-uint8", "HW", "HW1", "float-unit", "float-255", "uint16", "bool", "RGBA-transparent"],
)
def test_numpy_arrays(array, expected):
    rgb = load_image(array)
    assert rgb.mode == "RGB" and rgb.size == (6, 4)
    assert rgb.getpixel((0, 0)) == expected


def test_torch_tensors_are_channels_first_or_last():
    chw = torch.tensor(RED, dtype=torch.float32)[:, None, None].expand(3, 4, 6) / 255
    assert load_image(chw).getpixel((5, 3)) == RED
    hwc = torch.tensor(RED, dtype=torch.uint8).expand(5, 6, 3)
    assert load_image(hwc).size == (6, 5) and load_image(hwc).getpixel((0, 0)) == RED
    assert load_image(chw.half()).getpixel((0, 0)) == RED
    batch = load_images(torch.stack([chw, chw]))
    assert len(batch) == 2 and all(image.getpixel((0, 0)) == RED for image in batch)


def test_paths_bytes_file_objects_and_dataset_dicts(tmp_path):
    path = tmp_path / "red.png"
    rgba_half_transparent().save(path)
    data = path.read_bytes()
    expected = to_rgb(rgba_half_transparent())
    for source in (str(path), Path(path), data, bytearray(data), io.BytesIO(data), {"bytes": data, "path": None},
                   {"path": str(path)}):  # fmt: skip
        image = load_image(source)
        assert image.mode == "RGB" and list(image.getdata()) == list(expected.getdata()), type(source)


def test_exif_orientation_is_applied(tmp_path):
    image = PIL.Image.new("RGB", (6, 4), RED)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(str(path)).size == (4, 6)


def test_load_images_keeps_none_and_wraps_single_images():
    batch = load_images([solid(), None, np.zeros((4, 6, 3), np.uint8)])
    assert batch[1] is None and batch[0].mode == batch[2].mode == "RGB"
    assert len(load_images(solid())) == 1
    assert len(load_images(np.zeros((4, 6, 3), np.uint8))) == 1


def test_missing_and_unreadable_files_name_the_argument_and_index(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"images\[1\].*nope\.png"):
        load_images([solid(), str(tmp_path / "nope.png")])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match=r"images\[0\].*broken\.jpg"):
        load_images([str(broken)])
    with pytest.raises(ValueError, match=r"images\[2\].*bytes"):
        load_images([solid(), None, b"garbage"])
    with pytest.raises(ValueError, match=r"`images\[0\]`.*empty"):
        load_images([b""])


def test_wrong_types_and_shapes_raise_clear_errors():
    with pytest.raises(InvalidInputTypeError, match=r"images\[1\].*int") as caught:
        load_images([solid(), 42])
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, ValueError)
    with pytest.raises(ValueError, match="channel axis"):
        load_image(np.zeros((5, 6, 7), np.uint8))
    with pytest.raises(ValueError, match="dimensions"):
        load_image(np.zeros((6,), np.uint8))
    with pytest.raises(ValueError, match="dimensions"):
        load_images(np.zeros((1, 2, 3, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="URL"):
        load_image("https://example.com/shoe.jpg")
    with pytest.raises(ValueError, match="neither"):
        load_image({"bytes": None, "path": None})


def _png_header_only(width, height):
    """A tiny PNG that declares `width` x `height` pixels: what a decompression bomb looks like from its header."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "width, height, pil_limit, message",
    [
        (10000, 10000, "default", r"the image is 10000 x 10000 = 100,000,000 pixels, more than the limit of 89,478,"),
        (15000, 15000, "default", r"PIL refuses .* \(Image size \(225000000 pixels\) exceeds limit"),
        (15000, 15000, None, r"the image is 15000 x 15000 = 225,000,000 pixels, more than the limit of 89,478,"),
    ],
)
def test_images_above_the_pixel_limit_are_refused_from_their_header(
    tmp_path, monkeypatch, width, height, pil_limit, message
):
    if pil_limit is None:  # PIL's own check switched off: ours still holds
        monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", None)

    def no_decoding(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", no_decoding)
    bomb = _png_header_only(width, height)
    assert len(bomb) < 100
    (tmp_path / "bomb.png").write_bytes(bomb)
    for source in (bomb, str(tmp_path / "bomb.png"), {"bytes": bomb, "path": None}, io.BytesIO(bomb)):
        with pytest.raises(ValueError, match=r"`image\[2\]`: " + message):
            load_image(source, "image", 2)


def test_the_pixel_limit_covers_decoded_images_and_arrays(monkeypatch):
    import make_hf.image_utils as image_utils

    monkeypatch.setattr(image_utils, "MAX_IMAGE_PIXELS", 6 * 4 - 1)
    for image in (solid(), np.zeros((4, 6, 3), np.uint8), torch.zeros(3, 4, 6)):
        with pytest.raises(ValueError, match="6 x 4 = 24 pixels, more than the limit of 23"):
            load_image(image)
    with pytest.raises(ValueError, match=r"`images\[1\]`: the image is 6 x 4"):
        load_images([None, solid()])
    monkeypatch.setattr(image_utils, "MAX_IMAGE_PIXELS", 6 * 4)
    assert load_image(solid()).size == (6, 4)


def test_a_decompression_bomb_error_from_pil_is_a_value_error(monkeypatch):
    import make_hf.image_utils as image_utils

    monkeypatch.setattr(image_utils, "MAX_IMAGE_PIXELS", 10**12)  # leave the refusal to PIL
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="decompression bomb"):
        load_image(_png_header_only(300, 300))  # more than twice PIL's limit: DecompressionBombError
    with pytest.raises(ValueError, match="decompression bomb"):
        load_image(_png_header_only(12, 12))  # above PIL's limit: DecompressionBombWarning
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 200)
    with pytest.raises(ValueError, match="cannot read"):  # within both limits: decoded, and found truncated
        load_image(_png_header_only(12, 12))


@pytest.mark.parametrize(
    "image",
    [
        np.full((4, 6, 3), np.nan, np.float32),
        np.where(np.eye(4, 6, dtype=bool)[..., None], np.inf, 0.5).repeat(3, axis=-1),
        torch.tensor([[[0.5, -float("inf")]] * 2] * 3, dtype=torch.float16),
        torch.tensor([[[0.5, float("nan")]] * 2] * 3, dtype=torch.bfloat16),
    ],
)
def test_float_images_with_nan_or_inf_are_refused(image):
    with pytest.raises(ValueError, match=r"`images\[3\]`: the float image has \d+ NaN or infinite value\(s\)"):
        load_image(image, "images", 3)
