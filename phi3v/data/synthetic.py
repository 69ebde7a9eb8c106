"""A deterministic synthetic catalogue that behaves like the DBQ Burberry one, for offline work.

Every product is a drawn item on a light background: its category is a distinct silhouette, its
colour a flat fill, its material a visible texture, an optional Burberry-style check crosses it,
and its size is how much of the canvas it fills. The full price is a product of multipliers of
exactly those visible attributes (times a small stored noise), so a model can learn it from pixels.

Rows use the DBQ schema (17 columns, same names and Python types); `imageurl` is the JPEG's file
name relative to the image directory. The same `SyntheticSpec` always gives identical rows and
byte-identical images: every random draw comes from a generator seeded with (seed, index).

Two options, both off by default (then rows and images are exactly those above), give a catalogue of
several photos and more fields (issue 22):
  views=2                  a second photo per item, a close-up of its fabric (colour, material texture
                           and check, magnified 3x, filling the frame), "{product_code}_detail.jpg" in the
                           column `detail_imageurl`: one column per photo, so a loader maps the photos as
                           `columns.image: [imageurl, detail_imageurl]`.
  attribute_columns=true   the columns `colour` and `material` (category fields; the colour is in no
                           other column, the material also in the title).

    python -m phi3v.data.synthetic --n 3000     # renders into a temporary directory, prints rows/s
"""

from __future__ import annotations

import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "MATERIALS",
    "MATERIALS_BY_CATEGORY",
    "SIZES",
    "COLUMNS",
    "ATTRIBUTE_COLUMNS",
    "DETAIL_COLUMN",
    "PRICE_RANGE",
    "ProductAttributes",
    "SyntheticSpec",
    "generate_catalogue",
    "price_of",
    "render_detail",
    "render_product",
    "sample_attributes",
    "title_of",
]

COLUMNS = (
    "website_name", "competence_date", "country_code", "currency_code", "brand",
    "category1_code", "category2_code", "category3_code", "product_code", "title", "itemurl",
    "imageurl", "full_price", "price", "full_price_eur", "price_eur", "flg_discount",
)  # fmt: skip

# category3_code -> (category2_code, title noun, base USD price, materials sold in it).
# Bases are chosen so every combination of multipliers, noise and discount stays in PRICE_RANGE.
_CATALOGUE: dict[str, tuple[str, str, float, tuple[str, ...]]] = {
    "SCARVES": ("ACCESSORIES", "Scarf", 420.0, ("cashmere", "wool", "silk", "cotton")),
    "BAGS": ("ACCESSORIES", "Tote", 1290.0, ("leather", "nylon", "cotton")),
    "TRENCH COATS": ("CLOTHING", "Trench Coat", 1050.0, ("cotton", "wool", "cashmere", "nylon")),
    "SHOES": ("SHOES", "Loafers", 590.0, ("leather", "nylon", "cotton")),
    "BELTS": ("ACCESSORIES", "Belt", 390.0, ("leather", "nylon")),
    "HATS": ("ACCESSORIES", "Bucket Hat", 330.0, ("cotton", "wool", "nylon")),
    "WALLETS": ("ACCESSORIES", "Wallet", 450.0, ("leather", "nylon", "cotton")),
    "T-SHIRTS": ("CLOTHING", "T-shirt", 290.0, ("cotton", "silk")),
}
CATEGORIES: tuple[str, ...] = tuple(_CATALOGUE)
MATERIALS_BY_CATEGORY: dict[str, tuple[str, ...]] = {category: info[3] for category, info in _CATALOGUE.items()}

COLOURS: dict[str, tuple[int, int, int]] = {  # all clearly darker or more saturated than the background
    "beige": (212, 188, 148),
    "black": (34, 32, 32),
    "navy": (30, 42, 82),
    "red": (168, 30, 40),
    "camel": (186, 136, 80),
    "grey": (128, 128, 134),
    "green": (38, 88, 58),
    "pink": (222, 150, 168),
}
MATERIAL_MULTIPLIER: dict[str, float] = {
    "nylon": 0.85, "cotton": 1.0, "wool": 1.2, "silk": 1.3, "leather": 1.45, "cashmere": 1.6,
}  # fmt: skip
MATERIALS: tuple[str, ...] = tuple(MATERIAL_MULTIPLIER)
SIZES: tuple[str, ...] = ("small", "medium", "large")
SIZE_MULTIPLIER: dict[str, float] = {"small": 0.8, "medium": 1.0, "large": 1.25}
SIZE_SCALE: dict[str, float] = {"small": 0.60, "medium": 0.75, "large": 0.90}  # item side / canvas side
CHECK_MULTIPLIER = 1.25
PRICE_NOISE = 0.03  # full price varies uniformly by +-3% around the attribute price
PRICE_RANGE = (150.0, 3500.0)  # every generated price and full price lies in here (USD)
DISCOUNT_SHARE = 0.10  # ~10% of rows are on sale ...
DISCOUNT_FACTOR = 0.70  # ... at 30% off
USD_TO_EUR = 0.92
_SIZE_WORDS = {  # title word for small / medium / large; medium has none
    "TRENCH COATS": ("Short", "", "Long"),
    "T-SHIRTS": ("Cropped", "", "Oversized"),
    "SCARVES": ("Mini", "", "Oversized"),
}
_DEFAULT_SIZE_WORDS = ("Small", "", "Large")
DETAIL_COLUMN = "detail_imageurl"  # the second view's file name (views=2)
ATTRIBUTE_COLUMNS = ("colour", "material")  # attribute_columns=True
DETAIL_ZOOM = 3  # the close-up magnifies the fabric this many times (nearest neighbour: the weave stays crisp)
DETAIL_SPAN = 0.6  # ... and shows this fraction of the item's side: a few repeats of the check
_GOLD = (196, 164, 84)  # buckles, clasps, snaps


@dataclass(frozen=True)
class SyntheticSpec:
    num_products: int = 3000
    seed: int = 0
    image_size: int = 224  # square images, pixels
    duplicate_share: float = 0.0  # fraction of extra rows repeating an existing product_code (to exercise de-dup)
    views: int = 1  # photos per product: 1 = the catalogue shot; 2 = also a fabric close-up (`detail_imageurl`)
    attribute_columns: bool = False  # also the columns `colour` and `material`


@dataclass(frozen=True)
class ProductAttributes:
    """Everything that decides a product's picture and full price."""

    category: str
    colour: str
    material: str
    size: str  # "small" | "medium" | "large"
    check: bool
    price_noise: float = 0.0  # in [-PRICE_NOISE, PRICE_NOISE]; the only invisible part of the price
    texture_seed: int = 0  # seeds the material texture, so rendering is a pure function
    offset_x: float = 0.0  # position jitter in [-1, 1], as a fraction of half the free margin
    offset_y: float = 0.0
    background: int = 244  # background lightness (236..251)


def _uniform(rng: random.Random | np.random.Generator, low: float = 0.0, high: float = 1.0) -> float:
    # Both generator types have .random() in [0, 1): one code path, no global state.
    return low + (high - low) * float(rng.random())


def _pick(rng: random.Random | np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[min(int(_uniform(rng) * len(options)), len(options) - 1)]


def sample_attributes(rng: random.Random | np.random.Generator, index: int) -> ProductAttributes:
    """Draw one product's attributes. Categories cycle with `index` so every category is balanced."""
    category = CATEGORIES[index % len(CATEGORIES)]
    return ProductAttributes(
        category=category,
        colour=_pick(rng, tuple(COLOURS)),
        material=_pick(rng, _CATALOGUE[category][3]),
        size=_pick(rng, SIZES),
        check=_uniform(rng) < 0.4,  # check is Burberry's signature, but most items are plain
        price_noise=round(_uniform(rng, -PRICE_NOISE, PRICE_NOISE), 6),
        texture_seed=int(_uniform(rng) * 2**31),
        offset_x=round(_uniform(rng, -1.0, 1.0), 4),
        offset_y=round(_uniform(rng, -1.0, 1.0), 4),
        background=236 + int(_uniform(rng) * 16),
    )


def _round_price(usd: float) -> float:
    """Burberry style: whole dollars ending in 0 (half-up, so 1285 -> 1290)."""
    return float(math.floor(usd / 10.0 + 0.5) * 10)


def price_of(attributes: ProductAttributes) -> float:
    """The full price in USD: base[category] x material x check x size x (1 + noise), rounded to tens."""
    base = _CATALOGUE[attributes.category][2]
    value = (
        base
        * MATERIAL_MULTIPLIER[attributes.material]
        * (CHECK_MULTIPLIER if attributes.check else 1.0)
        * SIZE_MULTIPLIER[attributes.size]
        * (1.0 + attributes.price_noise)
    )
    return _round_price(value)


def title_of(attributes: ProductAttributes) -> str:
    """Burberry-like title from visible attributes, e.g. "Large Vintage Check Cashmere Scarf"."""
    size_word = _SIZE_WORDS.get(attributes.category, _DEFAULT_SIZE_WORDS)[SIZES.index(attributes.size)]
    pattern = ""
    if attributes.check:  # the classic camel/beige check is sold as "Vintage Check"
        pattern = "Vintage Check" if attributes.colour in ("beige", "camel") else "Check"
    words = [size_word, pattern, attributes.material.capitalize(), _CATALOGUE[attributes.category][1]]
    return " ".join(word for word in words if word)


# ---------------------------------------------------------------------------------------------
# Rendering. Shapes are written in unit coordinates (u, v) in [0, 1]^2 of the item's square box.


@dataclass(frozen=True)
class _Box:
    x0: float
    y0: float
    side: float

    def pt(self, u: float, v: float) -> tuple[float, float]:
        return (self.x0 + u * self.side, self.y0 + v * self.side)

    def rect(self, u0: float, v0: float, u1: float, v1: float) -> list[float]:
        return [*self.pt(u0, v0), *self.pt(u1, v1)]

    def poly(self, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [self.pt(u, v) for u, v in points]


def _item_box(attributes: ProductAttributes, size: int) -> _Box:
    side = SIZE_SCALE[attributes.size] * size
    half_margin = (size - side) / 2
    # Jitter moves the item by at most half of the free margin, so it never touches the border.
    x0 = half_margin * (1.0 + 0.5 * attributes.offset_x)
    y0 = half_margin * (1.0 + 0.5 * attributes.offset_y)
    return _Box(x0, y0, side)


_COAT = [(0.36, 0.04), (0.64, 0.04), (0.82, 0.12), (0.97, 0.72), (0.86, 0.74), (0.78, 0.32), (0.86, 0.98),
         (0.14, 0.98), (0.22, 0.32), (0.14, 0.74), (0.03, 0.72), (0.18, 0.12)]  # fmt: skip
_TSHIRT = [(0.38, 0.1), (0.62, 0.1), (0.8, 0.14), (0.98, 0.34), (0.88, 0.44), (0.76, 0.32), (0.76, 0.9),
           (0.24, 0.9), (0.24, 0.32), (0.12, 0.44), (0.02, 0.34), (0.2, 0.14)]  # fmt: skip
# Bucket hat crown: a half-ellipse dome (centre (0.5, 0.36), radii 0.23 x 0.16) on tapering sides.
_HAT_CROWN = [(0.5 + 0.23 * math.cos(t), 0.36 - 0.16 * math.sin(t)) for t in np.linspace(0.0, np.pi, 13)] + [
    (0.24, 0.62), (0.76, 0.62)]  # fmt: skip
_SHOE = [(0.04, 0.84), (0.04, 0.5), (0.12, 0.44), (0.3, 0.47), (0.45, 0.58), (0.7, 0.64), (0.9, 0.7),
         (0.98, 0.8), (0.98, 0.84)]  # fmt: skip


def _draw_shape(draw: ImageDraw.ImageDraw, category: str, box: _Box, fill, outline, width: int) -> None:
    """The textured body of the item: drawn once into the mask, once more for its outline."""
    if category == "SCARVES":  # a long hanging strip (fringe is a detail)
        draw.rectangle(box.rect(0.3, 0.07, 0.7, 0.93), fill=fill, outline=outline, width=width)
    elif category == "BAGS":  # trapezoid body (handle is a detail)
        draw.polygon(box.poly([(0.1, 0.96), (0.9, 0.96), (0.78, 0.42), (0.22, 0.42)]), fill, outline, width)
    elif category == "TRENCH COATS":
        draw.polygon(box.poly(_COAT), fill, outline, width)
    elif category == "T-SHIRTS":
        draw.polygon(box.poly(_TSHIRT), fill, outline, width)
    elif category == "SHOES":  # upper in profile (sole is a detail)
        draw.polygon(box.poly(_SHOE), fill, outline, width)
    elif category == "BELTS":  # thin strap (buckle is a detail)
        draw.rectangle(box.rect(0.16, 0.44, 0.99, 0.56), fill=fill, outline=outline, width=width)
    elif category == "HATS":  # dome crown + wide brim
        draw.polygon(box.poly(_HAT_CROWN), fill, outline, width)
        draw.polygon(box.poly([(0.02, 0.8), (0.98, 0.8), (0.8, 0.6), (0.2, 0.6)]), fill, outline, width)
    elif category == "WALLETS":  # small flat rectangle
        draw.rounded_rectangle(box.rect(0.14, 0.32, 0.86, 0.7), 0.04 * box.side, fill, outline, width)
    else:
        raise ValueError(f"unknown category {category!r}")


def _draw_details(draw: ImageDraw.ImageDraw, category: str, box: _Box, dark: tuple[int, int, int], width: int):
    """Untextured parts: handles, hardware, seams, fringe, soles."""
    w = max(1, round(0.035 * box.side))  # thick parts (handle, buckle) scale with the item
    if category == "SCARVES":
        for k in range(12):
            u = 0.31 + k * 0.38 / 11
            draw.line([box.pt(u, 0.0), box.pt(u, 0.07)], fill=dark, width=width)
            draw.line([box.pt(u, 0.93), box.pt(u, 1.0)], fill=dark, width=width)
    elif category == "BAGS":
        draw.arc(box.rect(0.3, 0.1, 0.7, 0.74), 180, 360, fill=dark, width=w)
        draw.rectangle(box.rect(0.44, 0.5, 0.56, 0.56), fill=_GOLD)
    elif category == "TRENCH COATS":
        draw.line(box.poly([(0.36, 0.04), (0.5, 0.36), (0.64, 0.04)]), fill=dark, width=width)
        draw.rectangle(box.rect(0.2, 0.5, 0.8, 0.56), fill=dark)
        draw.rectangle(box.rect(0.46, 0.49, 0.54, 0.57), outline=_GOLD, width=width)
        for u in (0.42, 0.58):
            for v in (0.2, 0.3, 0.4, 0.66):
                draw.ellipse(box.rect(u - 0.015, v - 0.015, u + 0.015, v + 0.015), fill=dark)
    elif category == "T-SHIRTS":
        draw.arc(box.rect(0.38, 0.02, 0.62, 0.2), 0, 180, fill=dark, width=w)
        draw.line([box.pt(0.24, 0.86), box.pt(0.76, 0.86)], fill=dark, width=width)
    elif category == "SHOES":
        draw.rounded_rectangle(box.rect(0.02, 0.84, 0.98, 0.94), 0.04 * box.side, fill=(58, 48, 42))
        for k in range(4):
            u = 0.36 + 0.08 * k
            draw.line([box.pt(u, 0.5 + 0.06 * k), box.pt(u + 0.06, 0.56 + 0.06 * k)], fill=dark, width=width)
    elif category == "BELTS":
        draw.rectangle(box.rect(0.01, 0.36, 0.18, 0.64), outline=_GOLD, width=w)
        draw.line([box.pt(0.09, 0.5), box.pt(0.22, 0.5)], fill=_GOLD, width=width)
        for u in (0.6, 0.68, 0.76, 0.84):
            draw.ellipse(box.rect(u - 0.012, 0.488, u + 0.012, 0.512), fill=dark)
    elif category == "HATS":
        draw.rectangle(box.rect(0.24, 0.55, 0.76, 0.61), fill=dark)
        draw.line([box.pt(0.12, 0.74), box.pt(0.88, 0.74)], fill=dark, width=width)
    elif category == "WALLETS":
        draw.line(box.poly([(0.14, 0.46), (0.5, 0.55), (0.86, 0.46)]), fill=dark, width=width)
        draw.ellipse(box.rect(0.47, 0.5, 0.53, 0.56), fill=_GOLD)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


@lru_cache(maxsize=8)
def _fixed_texture(material: str, size: int) -> np.ndarray:
    """Textures that depend only on the canvas size: computed once (read-only, shared)."""
    xs, ys = _grid(size)
    if material == "cotton":  # fine twill: diagonal lines 4 px apart
        texture = np.where(((xs + ys) // 2) % 2 == 0, 9.0, -9.0)
    else:  # nylon ripstop: a faint light grid every 8 px
        texture = np.where((xs % 8 < 1) | (ys % 8 < 1), 22.0, 0.0)
    texture = texture.astype(np.float32)
    texture.flags.writeable = False
    return texture


def _texture(material: str, seed: int, size: int, box: _Box, region: tuple[slice, slice]) -> np.ndarray:
    """Additive brightness (grey levels) over `region` that makes the material visible, also on black."""
    if material in ("cotton", "nylon"):
        return _fixed_texture(material, size)[region]
    rng = np.random.default_rng(seed)
    xs, ys = (grid[region] for grid in _grid(size))
    if material == "wool":  # coarse knit: blocky noise in 4 px cells
        cells = rng.standard_normal(((size + 3) // 4, (size + 3) // 4), dtype=np.float32) * 14.0
        return np.repeat(np.repeat(cells, 4, axis=0), 4, axis=1)[region]
    if material == "cashmere":  # soft: a smooth top-to-bottom gradient, no grain
        return np.broadcast_to(18.0 - 36.0 * (ys[:, :1] - box.y0) / box.side, ys.shape)
    if material == "leather":  # grain: sparse dark pores and a diagonal highlight
        pores = (rng.random(xs.shape, dtype=np.float32) < 0.1) * np.float32(-30.0)
        along = ((xs - box.x0) + (ys - box.y0)) / box.side - 0.7
        return pores + 28.0 * np.exp(-(along**2) / 0.02)
    if material == "silk":  # sheen: wide glossy bands
        return 30.0 * np.sin(2 * np.pi * (0.8 * xs + 0.4 * ys) / (0.25 * box.side))
    raise ValueError(f"unknown material {material!r}")


# Check stripes within one repeat: (start, end) as a fraction of the period, colour (None = dark), opacity.
_CHECK_STRIPES = (
    (0.0, 0.28, None, 0.55),
    (0.5, 0.56, (250.0, 250.0, 246.0), 0.8),
    (0.76, 0.8, (200.0, 20.0, 30.0), 0.8),
)


def _stripe_profile(coords: np.ndarray, origin: float, period: float, dark: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Opacity (n,) and premultiplied colour (3, n) of the check at pixel coordinates along one axis."""
    phase = ((coords - origin) % period) / period
    alpha = np.zeros(coords.shape, np.float32)
    colour = np.zeros((3, *coords.shape), np.float32)
    for lo, hi, stripe_colour, opacity in _CHECK_STRIPES:
        inside = (phase >= lo) & (phase < hi)
        alpha[inside] = opacity
        colour[:, inside] = np.asarray(dark if stripe_colour is None else stripe_colour, np.float32)[:, None] * opacity
    return alpha, colour


def _check(fill: np.ndarray, base: tuple[int, int, int], box: _Box, region: tuple[slice, slice]) -> np.ndarray:
    """Burberry-style check on (3, h, w) planes: wide dark bands, thin white and red lines, both ways.

    Stripes are axis-aligned, so each direction is one blend with a 1-D profile (fast).
    """
    period = box.side / 7  # seven repeats across the item, whatever its size
    dark = (20.0, 20.0, 20.0) if sum(base) > 300 else (196.0, 150.0, 96.0)  # contrast with the base
    rows, cols = (np.arange(axis.start, axis.stop, dtype=np.float32) for axis in region)
    alpha, colour = _stripe_profile(cols, box.x0, period, dark)  # vertical stripes: vary along columns
    fill = fill * (1.0 - alpha)[None, None, :] + colour[:, None, :]
    alpha, colour = _stripe_profile(rows, box.y0, period, dark)  # horizontal stripes: vary along rows
    return fill * (1.0 - alpha)[None, :, None] + colour[:, :, None]


def render_product(attributes: ProductAttributes, size: int) -> Image.Image:
    """Draw one product photo (RGB, size x size). A pure function of its arguments."""
    box = _item_box(attributes, size)
    width = max(1, size // 112)  # outline / seam width: 2 px at 224
    mask = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(mask), attributes.category, box, 255, None, 1)

    # Only the item's box is coloured (it covers 36-81% of the canvas), as channel-first float
    # planes: broadcasting over the last axis of an (h, w, 3) array is slow.
    left, top = int(box.x0), int(box.y0)
    right, bottom = min(size, math.ceil(box.x0 + box.side) + 1), min(size, math.ceil(box.y0 + box.side) + 1)
    region = (slice(top, bottom), slice(left, right))
    base = COLOURS[attributes.colour]
    texture = _texture(attributes.material, attributes.texture_seed, size, box, region)
    fill = np.asarray(base, np.float32)[:, None, None] + texture[None]
    if attributes.check:
        fill = _check(fill, base, box, region)
    planes = np.rint(np.clip(fill, 0, 255)).astype(np.uint8)
    item = Image.merge("RGB", [Image.fromarray(plane, "L") for plane in planes])
    light = attributes.background
    image = Image.new("RGB", (size, size), (light, light - 2, light - 6))  # slightly warm studio backdrop
    image.paste(item, (left, top), mask.crop((left, top, right, bottom)))

    draw = ImageDraw.Draw(image)
    dark = tuple(int(c * 0.55) for c in base)
    _draw_shape(draw, attributes.category, box, None, dark, width)
    _draw_details(draw, attributes.category, box, dark, width)
    return image


def render_detail(attributes: ProductAttributes, size: int) -> Image.Image:
    """A close-up of the product's fabric (RGB, size x size): its colour, material texture and check,
    `DETAIL_ZOOM` times magnified, filling the frame. A pure function of its arguments."""
    side = -(-size // DETAIL_ZOOM)  # the fabric patch, before magnifying
    box = _Box(0.0, 0.0, side / DETAIL_SPAN)  # the item the patch is cut from: textures and check scale with it
    region = (slice(0, side), slice(0, side))
    base = COLOURS[attributes.colour]
    fill = np.asarray(base, np.float32)[:, None, None] + _texture(attributes.material, attributes.texture_seed,
                                                                 side, box, region)[None]
    if attributes.check:
        fill = _check(fill, base, box, region)
    planes = np.rint(np.clip(fill, 0, 255)).astype(np.uint8)
    patch = Image.merge("RGB", [Image.fromarray(plane, "L") for plane in planes])
    return patch.resize((side * DETAIL_ZOOM, side * DETAIL_ZOOM), Image.NEAREST).crop((0, 0, size, size))


# ---------------------------------------------------------------------------------------------
# The catalogue.


def _row(attributes: ProductAttributes, product_code: int, rng: np.random.Generator) -> dict:
    full_price = price_of(attributes)
    discounted = _uniform(rng) < DISCOUNT_SHARE
    price = _round_price(full_price * DISCOUNT_FACTOR) if discounted else full_price
    category2, _, _, _ = _CATALOGUE[attributes.category]
    category1 = "WOMEN" if _uniform(rng) < 0.6 else "MEN"  # invisible, like in the real catalogue
    values = (
        "SYNTHETIC", "2023-11-01", "USA", "USD", "BURBERRY-SYNTHETIC", category1, category2, attributes.category,
        product_code, title_of(attributes), f"https://example.invalid/p/{product_code}", f"{product_code}.jpg",
        full_price, price, round(full_price * USD_TO_EUR, 2), round(price * USD_TO_EUR, 2), int(discounted),
    )  # fmt: skip
    return dict(zip(COLUMNS, values))


def _product_codes(spec: SyntheticSpec) -> list[int]:
    # Unique 8-digit codes, 7 apart, handed out in a seeded shuffled order (not sorted by index).
    order = np.random.default_rng((spec.seed, 1 << 30)).permutation(spec.num_products)
    return [80_000_000 + 7 * int(k) for k in order]


# Photo framing (width / height) per category, like catalogue shots of long or tall items. The HD
# transform turns aspect into token count (at num_crops 16: 2:1 -> 2,353 tokens, 3:2 -> 1,921,
# 1:1 -> 2,509, 3:5 -> 1,933; at num_crops 4: 457 or 757), so batches vary in length as real ones do.
FRAME_ASPECT: dict[str, float] = {
    "SCARVES": 2.0, "BELTS": 2.0, "SHOES": 1.5, "WALLETS": 4 / 3, "HATS": 4 / 3,
    "BAGS": 1.0, "T-SHIRTS": 0.8, "TRENCH COATS": 0.6,
}  # fmt: skip


def framed_product(attributes: ProductAttributes, size: int) -> Image.Image:
    """The square render placed on a wider or taller backdrop of its own background colour."""
    square = render_product(attributes, size)
    aspect = FRAME_ASPECT[attributes.category]
    width, height = (round(size * aspect), size) if aspect >= 1 else (size, round(size / aspect))
    if (width, height) == (size, size):
        return square
    framed = Image.new("RGB", (width, height), square.getpixel((0, 0)))
    framed.paste(square, ((width - size) // 2, (height - size) // 2))
    return framed


def _render_one(job: tuple[ProductAttributes, int, str, str | None]) -> None:
    attributes, size, path, detail_path = job
    framed_product(attributes, size).save(path, "JPEG", quality=90)
    if detail_path is not None:
        render_detail(attributes, size).save(detail_path, "JPEG", quality=90)


def generate_catalogue(spec: SyntheticSpec, image_dir: str | os.PathLike, workers: int = 2) -> list[dict]:
    """Render every product into `image_dir` ("{product_code}.jpg", JPEG q90) and return its rows.

    Product i draws from a generator seeded with (spec.seed, i), so rows do not depend on
    `num_products` (a smaller catalogue is a prefix of a larger one, codes aside) or on `workers`
    (rendering threads).
    Duplicate rows (duplicate_share > 0) are re-scrapes appended at the end: an earlier row's
    product, code, title and image(s), with the sale status drawn again.
    `views` and `attribute_columns` add columns and files (module docstring) and change nothing else.
    """
    if (spec.num_products < 1 or spec.image_size < 16 or not 0.0 <= spec.duplicate_share <= 1.0
            or spec.views not in (1, 2)):
        raise ValueError(f"invalid spec {spec}")
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    rows, jobs = [], []
    for index, code in enumerate(_product_codes(spec)):
        rng = np.random.default_rng((spec.seed, index))
        attributes = sample_attributes(rng, index)
        row = _row(attributes, code, rng)
        detail = f"{code}_detail.jpg" if spec.views == 2 else None
        if detail is not None:
            row[DETAIL_COLUMN] = detail
        if spec.attribute_columns:
            row.update(colour=attributes.colour, material=attributes.material)
        rows.append(row)
        jobs.append((attributes, spec.image_size, str(image_dir / f"{code}.jpg"), detail and str(image_dir / detail)))

    dup_rng = np.random.default_rng((spec.seed, 1 << 31))
    for _ in range(round(spec.num_products * spec.duplicate_share)):
        original = rows[int(dup_rng.integers(spec.num_products))]
        copy = dict(original)
        discounted = _uniform(dup_rng) < DISCOUNT_SHARE
        copy["price"] = _round_price(copy["full_price"] * DISCOUNT_FACTOR) if discounted else copy["full_price"]
        copy["price_eur"] = round(copy["price"] * USD_TO_EUR, 2)
        copy["flg_discount"] = int(discounted)
        rows.append(copy)

    # Threads, not processes: PIL's JPEG encoder, file writes and most numpy work release the GIL
    # (2 threads: ~1.5x on 2 cores), and no fork of a process that may hold torch. Each job writes
    # its own file from a pure function, so the thread count cannot change any output byte.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in pool.map(_render_one, jobs):
            pass  # re-raises the first failure
    return rows


def _main() -> None:
    import argparse
    import tempfile
    import time

    parser = argparse.ArgumentParser(description="Render a synthetic catalogue and report the speed.")
    parser.add_argument("--n", type=int, default=3000, help="number of products")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=2, help="rendering threads")
    parser.add_argument("--out", default=None, help="image directory (default: a temporary one)")
    parser.add_argument("--views", type=int, default=1, choices=(1, 2), help="photos per product")
    args = parser.parse_args()
    spec = SyntheticSpec(num_products=args.n, image_size=args.size, views=args.views)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        rows = generate_catalogue(spec, args.out or tmp, workers=args.workers)
        seconds = time.perf_counter() - start
    print(
        f"{len(rows)} rows, {args.size}px, {args.workers} worker(s): {seconds:.2f} s ({len(rows) / seconds:.0f} rows/s)"
    )


if __name__ == "__main__":
    _main()
