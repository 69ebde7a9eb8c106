"""Phi3VImageProcessor against the reference outputs in ../shared/golden/phi3v-tiny (see its README).

The golden data is required: a missing directory fails at collection, it is never skipped.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

import phi3v.modeling.image_kernels as image_kernels
from phi3v.modeling.image_processing import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Phi3VImageProcessor,
    to_rgb,
)

pytestmark = pytest.mark.golden

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "phi3v-tiny"
if not (GOLDEN / "manifest.json").is_file():
    raise FileNotFoundError(f"golden reference data not found at {GOLDEN}; clone phi3v next to shared/")

MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
TOKEN_GRID = json.loads((GOLDEN / "calc_num_image_tokens.json").read_text())["grid"]
IMAGE_CASES = [case for case in MANIFEST["cases"] if case["images"]]
IMAGE_NAMES = sorted(path.stem for path in (GOLDEN / "images").glob("*.png"))
# manifest.json "tolerances": local crops are (u8/255 - mean)/std in float32 (rtol 0, atol 1e-6);
# the global crop is a float32 bicubic resize (atol 1e-5).
LOCAL_ATOL = 1e-6
GLOBAL_ATOL = 1e-5
CROP_NUMEL = 3 * 336 * 336
GOLDEN_NUM_CROPS = 16
SUBSAMPLE = 12  # pixel_values_sub = pixel_values[:, :, :, ::12, ::12]


def golden_image(name: str) -> Image.Image:
    return Image.open(GOLDEN / "images" / f"{name}.png")


@cache
def processed(*names: str) -> dict:
    """Output of the default processor (num_crops 16) for these golden images in one call."""
    return Phi3VImageProcessor()([golden_image(name) for name in names])


def reference_pixel_values(canvas: np.ndarray, num_crops: int) -> torch.Tensor:
    """Straightforward port of the reference tensor code: (num_crops+1, 3, 336, 336)."""
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    tensor = (torch.from_numpy(canvas.copy()).permute(2, 0, 1).float().div(255) - mean) / std
    global_view = F.interpolate(tensor[None], size=(336, 336), mode="bicubic", align_corners=False)
    _, height, width = tensor.shape
    crops = [
        tensor[:, top : top + 336, left : left + 336][None]
        for top in range(0, height, 336)
        for left in range(0, width, 336)
    ]
    zeros = torch.zeros(num_crops - len(crops), 3, 336, 336)
    return torch.cat([global_view, *crops, zeros])


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Uniform noise: every 8-bit value in every channel, the hardest case for resizing."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(params=["c-kernels", "no-c-kernels", "reference"])
def kernels(request, monkeypatch) -> str:
    """Run a test with the C kernels (where built), with the Pillow + numpy path that machines
    without a C compiler get (tests/test_image_kernels.py checks the kernels are built here), and
    with the reference transform of image_processing.py (image_kernels not used at all)."""
    if request.param == "no-c-kernels":
        monkeypatch.setattr(image_kernels, "_hd_canvas", None)
    if request.param == "reference":
        monkeypatch.setattr(Phi3VImageProcessor, "accelerated", False)
    return request.param


# ---- golden images --------------------------------------------------------------------------------
def test_golden_image_set_is_complete():
    expected = {"extreme_64x900", "gray_333x222", "landscape_300x200", "portrait_200x640"}
    assert set(IMAGE_NAMES) == expected | {"rgba_500x300", "square_1000x1000"}


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_hd_canvas_equals_golden_png(name, kernels):
    expected = np.asarray(Image.open(GOLDEN / "images" / "hd_canvas" / f"{name}.png").convert("RGB"))
    canvas = Phi3VImageProcessor().hd_canvas(golden_image(name))
    assert canvas.dtype == np.uint8
    assert canvas.shape == expected.shape
    assert np.array_equal(canvas, expected)


@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda case: case["name"])
def test_sizes_and_token_counts_equal_reference(case):
    tensors = load_file(str(GOLDEN / "cases" / f"{case['name']}.safetensors"))
    out = processed(*(Path(file).stem for file in case["images"]))
    assert list(out["pixel_values"].shape) == case["pixel_values_shape"]
    assert out["pixel_values"].dtype == torch.float32
    assert out["image_sizes"].dtype == torch.int64
    assert torch.equal(out["image_sizes"], tensors["image_sizes"])
    assert out["num_img_tokens"] == case["num_img_tokens"]
    # The pure arithmetic agrees with the pixel path (and with the manifest where it records it).
    arithmetic = [Phi3VImageProcessor().hd_canvas_size(w, h) for w, h in case["image_wh"]]
    assert out["image_sizes"].tolist() == [[h, w] for w, h in arithmetic]
    assert [list(wh) for wh in arithmetic] == case.get("hd_canvas_wh", [list(wh) for wh in arithmetic])
    assert out["num_img_tokens"] == [
        Phi3VImageProcessor().num_image_tokens(w, h) for w, h in case["image_wh"]
    ]


@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda case: case["name"])
def test_pixel_samples_equal_reference(case):
    tensors = load_file(str(GOLDEN / "cases" / f"{case['name']}.safetensors"))
    pixels = processed(*(Path(file).stem for file in case["images"]))["pixel_values"]
    sub = pixels[:, :, :, ::SUBSAMPLE, ::SUBSAMPLE]
    expected = tensors["pixel_values_sub"]
    torch.testing.assert_close(sub[:, 1:], expected[:, 1:], rtol=0, atol=LOCAL_ATOL)
    torch.testing.assert_close(sub[:, 0], expected[:, 0], rtol=0, atol=GLOBAL_ATOL)


@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda case: case["name"])
def test_crop_statistics_equal_reference(case):
    tensors = load_file(str(GOLDEN / "cases" / f"{case['name']}.safetensors"))
    pixels = processed(*(Path(file).stem for file in case["images"]))["pixel_values"]
    crops = pixels.double().flatten(2)  # (n, num_crops+1, 3*336*336)
    stats = {
        "pixel_crop_mean": crops.mean(-1),
        "pixel_crop_std": crops.std(-1),
        "pixel_crop_min": crops.amin(-1),
        "pixel_crop_max": crops.amax(-1),
        "pixel_crop_sum": crops.sum(-1),
    }
    for key, value in stats.items():
        expected = tensors[key]
        # Local and zero crops are bit-identical: only float64 summation order may differ.
        torch.testing.assert_close(value[:, 1:], expected[:, 1:], rtol=1e-9, atol=1e-9, msg=key)
        # Global crop: every value within GLOBAL_ATOL, so a sum within GLOBAL_ATOL per value.
        atol = GLOBAL_ATOL * (CROP_NUMEL if key == "pixel_crop_sum" else 1)
        torch.testing.assert_close(value[:, 0], expected[:, 0], rtol=0, atol=atol, msg=key)


def test_full_pixel_values_equal_reference():
    expected = torch.from_numpy(
        np.load(GOLDEN / "pixel_values_full_single_landscape_300x200.npz")["pixel_values"]
    )
    pixels = processed("landscape_300x200")["pixel_values"]
    assert pixels.shape == expected.shape == (1, GOLDEN_NUM_CROPS + 1, 3, 336, 336)
    torch.testing.assert_close(pixels[:, 1:], expected[:, 1:], rtol=0, atol=LOCAL_ATOL)
    torch.testing.assert_close(pixels[:, 0], expected[:, 0], rtol=0, atol=GLOBAL_ATOL)


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_global_crop_equals_reference(name):
    expected = torch.from_numpy(np.load(GOLDEN / "pixel_global_crops.npz")[name])
    assert expected.shape == (3, 336, 336)
    torch.testing.assert_close(processed(name)["pixel_values"][0, 0], expected, rtol=0, atol=GLOBAL_ATOL)


# ---- token counts and canvas sizes ---------------------------------------------------------------
@pytest.mark.parametrize("num_crops", sorted(TOKEN_GRID, key=int))
def test_token_counts_and_canvas_sizes_equal_reference_grid(num_crops):
    processor = Phi3VImageProcessor(num_crops=int(num_crops))
    rows = TOKEN_GRID[num_crops]
    assert len(rows) == 33
    wrong = [
        row
        for row in rows
        if processor.num_image_tokens(row["width"], row["height"]) != row["num_img_tokens"]
        or list(processor.hd_canvas_size(row["width"], row["height"])) != row["hd_size_wh"]
    ]
    assert wrong == []


def test_token_count_formula_of_a_grid():
    # 3 rows x 4 columns of crops: (12 + 1) * 144 + 1 + (3 + 1) * 12
    assert Phi3VImageProcessor().num_image_tokens(1024, 768) == 1921 == 13 * 144 + 1 + 4 * 12
    assert Phi3VImageProcessor().hd_canvas_size(1024, 768) == (1344, 1008)


@pytest.mark.parametrize("portrait", [False, True])
def test_odd_padding_puts_the_extra_white_line_at_the_bottom(portrait):
    # 1000x140, num_crops 7: resized to 2352x329, padded by 7 to 336: 3 lines on top, 4 below.
    size = (140, 1000) if portrait else (1000, 140)
    canvas = Phi3VImageProcessor(num_crops=7).hd_canvas(Image.new("RGB", size))  # black image
    lines = canvas.max(axis=(0, 2) if portrait else (1, 2))  # per column (portrait) or row
    assert canvas.shape == ((2352, 336, 3) if portrait else (336, 2352, 3))
    assert lines.tolist() == [255] * 3 + [0] * 329 + [255] * 4


@pytest.mark.parametrize(
    ("num_crops", "size"), [(4, (500, 300)), (4, (64, 900)), (9, (200, 640)), (9, (1280, 720))]
)
def test_num_crops_is_configurable(num_crops, size):
    row = next(r for r in TOKEN_GRID[str(num_crops)] if (r["width"], r["height"]) == size)
    images = [noise_image(*size, seed=1), noise_image(*size, seed=2)]
    out = Phi3VImageProcessor(num_crops=num_crops)(images)
    canvas_w, canvas_h = row["hd_size_wh"]
    assert out["pixel_values"].shape == (2, num_crops + 1, 3, 336, 336)
    assert out["image_sizes"].tolist() == [[canvas_h, canvas_w]] * 2
    assert out["num_img_tokens"] == [row["num_img_tokens"]] * 2
    valid = 1 + (canvas_h // 336) * (canvas_w // 336)
    assert torch.count_nonzero(out["pixel_values"][:, valid:]) == 0
    assert bool((out["pixel_values"][:, :valid].flatten(2).abs().amax(-1) > 0).all())


@pytest.mark.parametrize("num_crops", [0, -1])
def test_num_crops_below_one_is_rejected(num_crops):
    with pytest.raises(ValueError, match=f"num_crops must be >= 1, got {num_crops}"):
        Phi3VImageProcessor(num_crops=num_crops)


def test_num_crops_must_be_an_integer():
    with pytest.raises(TypeError, match="num_crops must be an integer"):
        Phi3VImageProcessor(num_crops=4.5)


# ---- fast path vs a straightforward implementation ----------------------------------------------
# (width, height, num_crops): canvases whose row/column factors (canvas side / 336) cover 1, 2, 3, 4, 5,
# 6, 7 and 14, including factor-2 edge clamping; portrait sizes go through the transposed path.
GRIDS = [(1000, 1000, 16), (300, 200, 16), (500, 300, 16), (200, 640, 16), (64, 900, 16), (90, 70, 1)]
GRIDS += [(700, 700, 4), (480, 700, 9), (1000, 140, 7)]


@pytest.mark.parametrize(("width", "height", "num_crops"), GRIDS)
def test_fast_path_equals_straightforward_reference(width, height, num_crops, kernels):
    processor = Phi3VImageProcessor(num_crops=num_crops)
    image = noise_image(width, height)
    pixels = processor(image)["pixel_values"][0]
    expected = reference_pixel_values(processor.hd_canvas(image), num_crops)
    assert torch.equal(pixels[1:], expected[1:])  # same float32 ops in the same order: bit-identical
    torch.testing.assert_close(pixels[0], expected[0], rtol=0, atol=GLOBAL_ATOL)


def test_normalisation_is_bit_identical_for_every_byte_value(kernels):
    levels = np.arange(256, dtype=np.uint8)
    image = Image.fromarray(
        np.stack([levels, levels[::-1], np.roll(levels, 7)], axis=-1)[None].repeat(256, 0)
    )
    processor = Phi3VImageProcessor(num_crops=1)
    canvas = processor.hd_canvas(image)
    assert len(np.unique(canvas[..., 0])) == 256
    expected = reference_pixel_values(canvas, 1)
    assert torch.equal(processor(image)["pixel_values"][0, 1], expected[1])


def test_threads_get_identical_results(kernels):
    images = [noise_image(700, 500, seed) for seed in range(4)]
    processor = Phi3VImageProcessor(num_crops=6)
    sequential = [processor(image)["pixel_values"] for image in images]
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = list(pool.map(lambda image: processor(image)["pixel_values"], images))
    assert all(torch.equal(a, b) for a, b in zip(sequential, threaded, strict=True))


# ---- image modes ----------------------------------------------------------------------------------
def rgb_noise(seed: int = 0, size: tuple[int, int] = (40, 30)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def canvas_of(image: Image.Image) -> np.ndarray:
    return Phi3VImageProcessor(num_crops=4).hd_canvas(image)


def image_in_mode(mode: str) -> Image.Image:
    rgb = rgb_noise()
    gray = rgb[..., 0]
    if mode == "I;16":
        return Image.fromarray(gray.astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(gray.astype(np.int32) * 200)  # up to 51000: a 16-bit range
    if mode == "F":
        return Image.fromarray(gray.astype(np.float32) / 255)
    return Image.fromarray(rgb).convert(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "YCbCr"])
def test_every_mode_gives_valid_pixel_values(mode):
    image = image_in_mode(mode)
    assert image.mode == mode
    out = Phi3VImageProcessor(num_crops=4)(image)
    assert out["pixel_values"].shape == (1, 5, 3, 336, 336)
    assert bool(torch.isfinite(out["pixel_values"]).all())
    assert out["image_sizes"].tolist() == [[672, 672]]


def test_rgba_drops_alpha_without_compositing():
    rgb = rgb_noise(1)
    alpha = np.random.default_rng(2).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    alpha[0, :] = 0  # fully transparent pixels keep their colour
    rgba = Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA")
    assert np.array_equal(canvas_of(rgba), canvas_of(Image.fromarray(rgb)))
    processor = Phi3VImageProcessor(num_crops=4)
    assert torch.equal(processor(rgba)["pixel_values"], processor(Image.fromarray(rgb))["pixel_values"])


def test_la_and_l_replicate_gray():
    gray = rgb_noise(3)[..., 0]
    expected = np.repeat(gray[..., None], 3, axis=-1)
    la = Image.fromarray(np.dstack([gray, np.zeros_like(gray)]), mode="LA")
    assert np.array_equal(np.asarray(to_rgb(la)), expected)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(gray))), expected)


def test_palette_and_cmyk_follow_pil_conversion():
    palette = Image.fromarray(rgb_noise(4)).convert("P")
    assert np.array_equal(np.asarray(to_rgb(palette)), np.asarray(palette.convert("RGB")))
    cmyk = Image.fromarray(rgb_noise(5)).convert("CMYK")
    assert np.array_equal(np.asarray(to_rgb(cmyk)), np.asarray(cmyk.convert("RGB")))


def test_rgb_image_is_passed_through():
    image = Image.fromarray(rgb_noise(6))
    assert to_rgb(image) is image


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16_bit_images_are_scaled_not_clipped(mode):
    values = np.array([[0, 257, 1000, 32896, 65535]], dtype=np.uint16)  # 1000 / 257 = 3.89 -> 4
    image = Image.new(mode, (5, 1))
    for x, value in enumerate(values[0]):
        image.putpixel((x, 0), int(value))
    assert np.array_equal(np.asarray(to_rgb(image))[..., 0], [[0, 1, 4, 128, 255]])


def test_16_bit_white_stays_white():
    image = Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16))
    assert image.mode == "I;16"
    assert bool((canvas_of(image) == 255).all())
    pixels = Phi3VImageProcessor(num_crops=4)(image)["pixel_values"][0, 1:5]
    white = (torch.tensor(1.0) - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    torch.testing.assert_close(pixels, white.view(1, 3, 1, 1).expand_as(pixels), rtol=0, atol=LOCAL_ATOL)


def test_32_bit_integer_images():
    small = Image.fromarray(np.array([[0, 7, 255]], dtype=np.int32))
    assert small.mode == "I"
    assert np.asarray(to_rgb(small))[0, :, 0].tolist() == [0, 7, 255]
    sixteen = Image.fromarray(np.array([[0, 514, 65535]], dtype=np.int32))
    assert np.asarray(to_rgb(sixteen))[0, :, 0].tolist() == [0, 2, 255]
    for bad in (70000, -1):
        with pytest.raises(ValueError, match="mode 'I' has values in"):
            to_rgb(Image.fromarray(np.array([[0, bad]], dtype=np.int32)))


def test_float_images():
    unit = Image.fromarray(np.array([[0.0, 0.2, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert np.asarray(to_rgb(unit))[0, :, 0].tolist() == [0, 51, 255]
    byte_range = Image.fromarray(np.array([[0.0, 100.0, 255.0]], dtype=np.float32))
    assert np.asarray(to_rgb(byte_range))[0, :, 0].tolist() == [0, 100, 255]
    for bad in (-0.5, 256.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="mode 'F'"):
            to_rgb(Image.fromarray(np.array([[0.5, bad]], dtype=np.float32)))


def test_unconvertible_mode_is_rejected_with_advice():
    with pytest.raises(ValueError, match=r"mode 'La'.*convert it to 'RGB'"):
        to_rgb(Image.new("La", (4, 4)))


def test_non_image_is_rejected():
    with pytest.raises(TypeError, match="expected a PIL.Image.Image, got ndarray"):
        Phi3VImageProcessor()(np.zeros((4, 4, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_empty_image_is_rejected(size):
    with pytest.raises(ValueError, match=f"size {size[0]}x{size[1]}"):
        Phi3VImageProcessor()(Image.new("RGB", size))


def test_extreme_aspect_ratio_is_rejected_but_counted():
    processor = Phi3VImageProcessor()
    assert processor.num_image_tokens(6000, 1) == 157  # the reference's arithmetic, canvas (5376, 0)
    assert processor.hd_canvas_size(6000, 1) == (5376, 0)
    for size in [(6000, 1), (1, 6000)]:
        with pytest.raises(ValueError, match=f"{size[0]}x{size[1]}.*num_crops=16"):
            processor(Image.new("RGB", size))
    assert processor(Image.new("RGB", (5000, 1)))["image_sizes"].tolist() == [[336, 5376]]


def test_empty_image_list_is_rejected():
    with pytest.raises(ValueError, match="no images"):
        Phi3VImageProcessor()([])


def test_numpy_output():
    out = Phi3VImageProcessor(num_crops=1)(Image.fromarray(rgb_noise()), return_tensors="np")
    assert isinstance(out["pixel_values"], np.ndarray) and out["pixel_values"].dtype == np.float32
    assert out["image_sizes"].tolist() == [[336, 336]] and out["num_img_tokens"] == [313]
    with pytest.raises(ValueError, match="return_tensors"):
        Phi3VImageProcessor()(Image.fromarray(rgb_noise()), return_tensors="tf")


# ---- configuration --------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path):
    processor = Phi3VImageProcessor(num_crops=9, image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.5, 1.0))
    processor.save_pretrained(tmp_path / "nested" / "dir")
    stored = json.loads((tmp_path / "nested" / "dir" / "preprocessor_config.json").read_text())
    assert stored == {
        "image_processor_type": "Phi3VImageProcessor",
        "processor_class": "Phi3VProcessor",
        "num_crops": 9,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.5, 1.0],
        "num_img_tokens": 144,
    }
    loaded = Phi3VImageProcessor.from_pretrained(tmp_path / "nested" / "dir")
    assert loaded.to_dict() == processor.to_dict() == stored


def test_from_pretrained_reads_golden_config():
    processor = Phi3VImageProcessor.from_pretrained(GOLDEN / "model")
    assert processor.num_crops == GOLDEN_NUM_CROPS
    assert processor.image_mean == OPENAI_CLIP_MEAN and processor.image_std == OPENAI_CLIP_STD
    assert processor.num_img_tokens == 144
    assert Phi3VImageProcessor.from_pretrained(str(GOLDEN / "model"), num_crops=4).num_crops == 4


def test_from_pretrained_without_config_uses_defaults(tmp_path):
    assert Phi3VImageProcessor.from_pretrained(tmp_path).to_dict() == Phi3VImageProcessor().to_dict()
    with pytest.raises(TypeError):
        Phi3VImageProcessor.from_pretrained(tmp_path, crops=4)
    with pytest.raises(ValueError, match="num_crops must be >= 1, got 0"):
        Phi3VImageProcessor.from_pretrained(tmp_path, num_crops=0)


def test_band_export_fallback_gives_identical_pixels(monkeypatch, kernels):
    """Images Pillow cannot export through Arrow (older Pillow, rows in several memory blocks) are
    copied out with tobytes (whole for the C kernels, per band otherwise): same pixels."""
    processor = Phi3VImageProcessor(num_crops=4)
    images = [noise_image(700, 500), noise_image(300, 640)]
    fast = processor(images)["pixel_values"]

    def not_exportable(_band):
        raise ValueError("Image rows are not contiguous in memory")

    monkeypatch.setattr(image_kernels.pa, "array", not_exportable)
    assert torch.equal(processor(images)["pixel_values"], fast)
