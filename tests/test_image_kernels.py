"""The optional C kernels of the image processor (phi3v/modeling/_hd_canvas.c) against Pillow.

The canvas must equal, byte for byte, what the reference builds with Pillow's bilinear resize:
checked here against an independent Pillow implementation over many sizes (landscape, portrait,
up- and downscaling, identity axes, widths that are no multiple of the vector width), and the
whole processor output with and without the kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_image_processing import noise_image

import phi3v.modeling.image_kernels as image_kernels
from phi3v.modeling.image_processing import Phi3VImageProcessor, hd_geometry

pytestmark = pytest.mark.unit

KERNELS = image_kernels._hd_canvas


def pillow_canvas(image: Image.Image, num_crops: int) -> np.ndarray:
    """The reference HD canvas (H, W, 3) with Pillow alone: transpose portrait images, resize
    (bilinear), pad the short side with white (the extra line after), transpose back."""
    geometry = hd_geometry(image.width, image.height, num_crops)
    landscape = image.transpose(Image.Transpose.TRANSPOSE) if geometry.transposed else image
    resized = landscape.resize((geometry.width, geometry.height), Image.BILINEAR)
    canvas = Image.new("RGB", (geometry.width, geometry.padded_height), (255, 255, 255))
    canvas.paste(resized, (0, (geometry.padded_height - geometry.height) // 2))
    if geometry.transposed:
        canvas = canvas.transpose(Image.Transpose.TRANSPOSE)
    return np.asarray(canvas)


needs_avx2 = pytest.mark.skipif(
    KERNELS is None or not KERNELS.available(), reason="the AVX2 resize needs an x86-64 CPU with AVX2"
)


def test_kernels_are_built():
    """`pip install -e .` builds them (setup.py); a silent fallback would only show as slowness."""
    assert KERNELS is not None, "phi3v.modeling._hd_canvas is not built: reinstall with a C compiler (make install)"


@pytest.fixture
def render_calls(monkeypatch) -> list[tuple]:
    """The (width, height, source type) of every render_canvas call the processor makes."""
    calls = []

    class Spy:
        available = staticmethod(KERNELS.available)
        normalise_crops = staticmethod(KERNELS.normalise_crops)

        @staticmethod
        def render_canvas(*args):
            calls.append((*args[1:3], type(args[0]).__name__))
            return KERNELS.render_canvas(*args)

    monkeypatch.setattr(image_kernels, "_hd_canvas", Spy)
    return calls


@needs_avx2
def test_processor_uses_the_native_resize(render_calls):
    Phi3VImageProcessor(num_crops=4)([noise_image(500, 300), noise_image(200, 640)])
    assert render_calls == [(500, 300, "memoryview"), (200, 640, "memoryview")]


# (width, height, num_crops): downscales and upscales on both axes, portrait and landscape, axes the
# resize leaves unchanged (336 -> 336, 672 -> 672), 1-pixel images, odd widths around the 8- and
# 16-byte vector widths, and padding on either side.
SIZES = [
    (1, 1, 1), (1, 1, 16), (2, 1, 4), (1, 3, 4), (7, 5, 4), (9, 17, 9), (15, 16, 16), (17, 33, 16),
    (336, 336, 1), (672, 500, 4), (500, 672, 4), (672, 672, 4), (1000, 1000, 4), (1000, 1000, 16),
    (600, 800, 4), (800, 600, 16), (333, 222, 16), (64, 900, 16), (1500, 97, 16), (90, 70, 16),
    (1344, 1001, 16), (1023, 769, 9), (2000, 1333, 16),
]  # fmt: skip


@needs_avx2
@pytest.mark.parametrize(("width", "height", "num_crops"), SIZES)
def test_canvas_equals_pillow(width, height, num_crops):
    image = noise_image(width, height, seed=width * 7 + height)
    canvas = Phi3VImageProcessor(num_crops=num_crops).hd_canvas(image)
    assert np.array_equal(canvas, pillow_canvas(image, num_crops))


@needs_avx2
def test_canvas_equals_pillow_on_random_sizes():
    rng = np.random.default_rng(2026)
    checked = 0
    while checked < 40:
        width, height = (int(v) for v in rng.integers(1, 1200, 2))
        num_crops = int(rng.choice([1, 2, 4, 6, 9, 16]))
        if hd_geometry(width, height, num_crops).height == 0:
            continue  # rejected by the processor (too elongated)
        image = noise_image(width, height, seed=checked)
        canvas = Phi3VImageProcessor(num_crops=num_crops).hd_canvas(image)
        assert np.array_equal(canvas, pillow_canvas(image, num_crops)), (width, height, num_crops)
        checked += 1


@pytest.mark.parametrize(("width", "height", "num_crops"), [(1000, 1000, 4), (600, 800, 16), (333, 222, 9)])
def test_processor_output_is_identical_without_kernels(width, height, num_crops, monkeypatch):
    processor = Phi3VImageProcessor(num_crops=num_crops)
    images = [noise_image(width, height, seed) for seed in range(2)]
    with_kernels = processor(images)
    monkeypatch.setattr(image_kernels, "_hd_canvas", None)
    without = processor(images)
    assert torch.equal(with_kernels["pixel_values"], without["pixel_values"])
    assert torch.equal(with_kernels["image_sizes"], without["image_sizes"])


# Canvas factors (side / 336) 1 to 7 and 14 on either axis, odd and even, padded or not, portrait and landscape.
ACCELERATED_SIZES = [(1000, 1000, 16), (500, 300, 16), (200, 640, 16), (64, 900, 16), (90, 70, 1), (700, 700, 4),
                     (480, 700, 9), (1000, 140, 7), (2000, 1333, 16), (1500, 97, 16)]


@pytest.mark.parametrize("with_c", [True, False], ids=["c-kernels", "no-c-kernels"])
@pytest.mark.parametrize(("width", "height", "num_crops"), ACCELERATED_SIZES)
def test_accelerated_output_is_bit_identical_to_the_reference(width, height, num_crops, with_c, monkeypatch):
    """image_kernels against the reference transform of image_processing.py: every value, global view
    included, bit for bit, so a processor never changes its output with the paths it can use."""
    if not with_c:
        monkeypatch.setattr(image_kernels, "_hd_canvas", None)
    images = [noise_image(width, height, seed) for seed in range(2)]
    processor = Phi3VImageProcessor(num_crops=num_crops)
    accelerated, canvas = processor(images), processor.hd_canvas(images[0])
    processor.accelerated = False
    reference = processor(images)
    assert torch.equal(accelerated["pixel_values"], reference["pixel_values"])
    assert torch.equal(accelerated["image_sizes"], reference["image_sizes"])
    assert np.array_equal(canvas, processor.hd_canvas(images[0]))


def test_lazily_loaded_file_is_read(tmp_path):
    """A PNG opened but not yet decoded: its pixels are loaded before they are read."""
    image = noise_image(410, 290, seed=3)
    image.save(tmp_path / "photo.png")
    lazy = Image.open(tmp_path / "photo.png")
    processor = Phi3VImageProcessor(num_crops=4)
    assert torch.equal(processor(lazy)["pixel_values"], processor(image)["pixel_values"])


@needs_avx2
def test_image_in_several_memory_blocks_is_copied_then_resized_natively(render_calls):
    """Pillow keeps big images in several memory blocks, which it cannot export without a copy."""
    image = noise_image(700, 500, seed=4)
    expected = pillow_canvas(image, 4)
    Image.core.set_block_size(4096)  # 1,024 pixels a block: the 500 rows span many blocks
    try:
        blocked = Image.frombytes("RGB", image.size, image.tobytes())
    finally:
        Image.core.set_block_size(16 * 1024 * 1024)  # Pillow's default
    with pytest.raises(ValueError, match="not contiguous"):
        image_kernels.pa.array(blocked)
    assert np.array_equal(Phi3VImageProcessor(num_crops=4).hd_canvas(blocked), expected)
    assert np.array_equal(Phi3VImageProcessor(num_crops=4).hd_canvas(image), expected)
    assert render_calls == [(700, 500, "bytes"), (700, 500, "memoryview")]  # copied, then read in place


@needs_avx2
def test_render_canvas_rejects_inconsistent_sizes():
    source = np.zeros(4 * 10 * 10, np.uint8)
    canvas = np.zeros((3, 336, 336), np.uint8)
    with pytest.raises(ValueError, match="inconsistent sizes"):  # source shorter than 20 x 10 pixels
        KERNELS.render_canvas(source, 20, 10, 80, False, 336, 168, 84, canvas)
    with pytest.raises(ValueError, match="inconsistent sizes"):  # resized image taller than the canvas
        KERNELS.render_canvas(source, 10, 10, 40, False, 336, 300, 84, canvas)
    with pytest.raises(ValueError, match="inconsistent sizes"):
        KERNELS.render_canvas(source, 10, 10, 40, False, 0, 300, 0, canvas)
    with pytest.raises(TypeError):  # read-only canvas
        KERNELS.render_canvas(source, 10, 10, 40, False, 336, 168, 84, canvas.tobytes())


@pytest.mark.skipif(KERNELS is None, reason="C kernels not built")
def test_normalise_crops_rejects_inconsistent_sizes():
    plane = np.zeros((336, 672), np.uint8)
    table = np.zeros((3, 256), np.float32)
    out = np.zeros((2, 3, 336, 336), np.float32)
    KERNELS.normalise_crops(plane, plane, plane, 336, 672, table, out)
    with pytest.raises(ValueError, match="inconsistent sizes"):  # out holds 2 crops, 4 needed
        KERNELS.normalise_crops(plane, plane, plane, 672, 336 * 2, table, out)
    with pytest.raises(ValueError, match="inconsistent sizes"):  # not a multiple of 336
        KERNELS.normalise_crops(plane, plane, plane, 336, 671, table, out)
    with pytest.raises(ValueError, match="inconsistent sizes"):
        KERNELS.normalise_crops(plane, plane, plane, 336, 672, table[:2], out)

