"""The synthetic catalogue: deterministic, in the DBQ schema, priced from what is visible, learnable from pixels."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from phi3v.data import synthetic as S
from phi3v.data.synthetic import ProductAttributes, SyntheticSpec, generate_catalogue, price_of, render_product

pytestmark = pytest.mark.unit

SCHEMA = {
    "website_name": str, "competence_date": str, "country_code": str, "currency_code": str, "brand": str,
    "category1_code": str, "category2_code": str, "category3_code": str, "product_code": int, "title": str,
    "itemurl": str, "imageurl": str, "full_price": float, "price": float, "full_price_eur": float,
    "price_eur": float, "flg_discount": int,
}  # fmt: skip
BACKGROUND_TOLERANCE = 24  # grey levels: a pixel this far from the corner colour belongs to the item


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> tuple[list[dict], str]:
    """400 products at the real size (~1.5 s), shared by the schema, price and pixel tests."""
    image_dir = tmp_path_factory.mktemp("synthetic")
    return generate_catalogue(SyntheticSpec(num_products=400, seed=5), image_dir), str(image_dir)


def _rgb(image_dir: str, row: dict) -> np.ndarray:
    return np.asarray(Image.open(os.path.join(image_dir, row["imageurl"])), np.float32)


def _foreground(pixels: np.ndarray) -> np.ndarray:
    return np.abs(pixels - pixels[:1, :1]).max(axis=-1) > BACKGROUND_TOLERANCE


def _item_thumbnail(pixels: np.ndarray, side: int = 32) -> np.ndarray:
    """Grey thumbnail of the item's bounding box: position and size removed, shape kept."""
    ys, xs = np.nonzero(_foreground(pixels))
    grey = Image.fromarray(pixels.mean(axis=-1).astype(np.uint8))
    crop = grey.crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)).resize((side, side), Image.BILINEAR)
    return np.asarray(crop, np.float32) / 255.0


def _stripe_edges(pixels: np.ndarray, step: float = 25.0) -> int:
    """How many rows plus columns of the item cross a straight edge along their whole length.

    A check's stripes run across the item, so the mean signed grey step between neighbouring rows
    (columns) is large for many of them; textures average out and plain items only have a few seams.
    """
    grey, inside = pixels.mean(axis=-1), _foreground(pixels)
    edges = 0
    for g, fg in ((grey, inside), (grey.T, inside.T)):
        both = fg[1:] & fg[:-1]
        steps = ((g[1:] - g[:-1]) * both).sum(axis=1) / np.maximum(both.sum(axis=1), 1)
        edges += int(((both.sum(axis=1) >= 8) & (np.abs(steps) > step)).sum())
    return edges


# ---------------------------------------------------------------------------------------------
# Determinism


def _files(image_dir) -> dict[str, bytes]:
    return {name: (image_dir / name).read_bytes() for name in sorted(os.listdir(image_dir))}


def test_same_spec_gives_identical_rows_and_image_bytes(tmp_path):
    spec = SyntheticSpec(num_products=48, seed=3, image_size=96, duplicate_share=0.25)
    rows_a = generate_catalogue(spec, tmp_path / "a", workers=1)
    rows_b = generate_catalogue(spec, tmp_path / "b", workers=2)  # the thread count must not matter
    assert rows_a == rows_b
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(files_a) == 48
    assert files_a == files_b

    rows_c = generate_catalogue(SyntheticSpec(num_products=48, seed=4, image_size=96), tmp_path / "c")
    assert [r["title"] for r in rows_c] != [r["title"] for r in rows_a[:48]]
    assert sorted(_files(tmp_path / "c").values()) != sorted(files_a.values())


def test_first_row_is_pinned(tmp_path):
    # Pins the sampling streams: a change here silently changes every cached synthetic dataset.
    rows = generate_catalogue(SyntheticSpec(num_products=8, image_size=32), tmp_path)
    assert rows[0] == {
        "website_name": "SYNTHETIC", "competence_date": "2023-11-01", "country_code": "USA", "currency_code": "USD",
        "brand": "BURBERRY-SYNTHETIC", "category1_code": "MEN", "category2_code": "ACCESSORIES",
        "category3_code": "SCARVES", "product_code": 80000035, "title": "Mini Check Wool Scarf",
        "itemurl": "https://example.invalid/p/80000035", "imageurl": "80000035.jpg", "full_price": 510.0,
        "price": 510.0, "full_price_eur": 469.2, "price_eur": 469.2, "flg_discount": 0,
    }  # fmt: skip


def _pixels_digest(image_dir) -> str:
    digest = hashlib.sha256()
    for name in sorted(os.listdir(image_dir)):
        digest.update(name.encode())
        with Image.open(image_dir / name) as image:
            digest.update(np.asarray(image).tobytes())
    return digest.hexdigest()


def test_default_catalogue_is_pinned(tmp_path):
    # Rows, file names and decoded pixels of the default options (views=1, no attribute columns), pinned
    # before those options existed: adding them changed no byte of the default catalogue.
    rows = generate_catalogue(SyntheticSpec(num_products=16, seed=2, image_size=64, duplicate_share=0.25), tmp_path)
    assert hashlib.sha256(json.dumps(rows).encode()).hexdigest() == (
        "318c45773146d0c7807e34f1b376dcca93df51792c418b43115bdd58bde26ffc"
    )
    assert len(os.listdir(tmp_path)) == 16
    assert _pixels_digest(tmp_path) == "ed434d6a91fbe56cd5ba870088bdeee8391285f2cce9215bff8617d08cc5428d"


def test_render_product_is_pure_and_sized():
    attributes = ProductAttributes("BAGS", "navy", "leather", "medium", True, texture_seed=9)
    first, second = render_product(attributes, 224), render_product(attributes, 224)
    assert first.mode == "RGB" and first.size == (224, 224)
    assert first.tobytes() == second.tobytes()
    assert render_product(attributes, 100).size == (100, 100)
    with pytest.raises(ValueError, match="unknown category"):
        render_product(ProductAttributes("SOCKS", "navy", "cotton", "medium", False), 64)


def test_sample_attributes_accepts_both_generator_kinds():
    from_random = S.sample_attributes(random.Random(3), 2)
    assert from_random == S.sample_attributes(random.Random(3), 2)
    assert from_random.category == "TRENCH COATS"  # categories cycle with the index
    for attributes in (from_random, S.sample_attributes(np.random.default_rng(3), 10)):
        assert attributes.colour in S.COLOURS and attributes.size in S.SIZES
        assert attributes.material in S.MATERIALS_BY_CATEGORY[attributes.category]
        assert abs(attributes.price_noise) <= S.PRICE_NOISE
        assert -1.0 <= attributes.offset_x <= 1.0 and -1.0 <= attributes.offset_y <= 1.0


# ---------------------------------------------------------------------------------------------
# Schema


def test_rows_have_the_burberry_schema_and_images(catalogue):
    rows, image_dir = catalogue
    assert len(rows) == 400
    for row in rows:
        assert list(row) == list(SCHEMA)
        assert {k: type(v) for k, v in row.items()} == SCHEMA
        assert row["imageurl"] == f"{row['product_code']}.jpg"
        assert row["itemurl"] == f"https://example.invalid/p/{row['product_code']}"
        assert row["category3_code"] in S.CATEGORIES
        assert row["category1_code"] in ("WOMEN", "MEN")
        assert row["category2_code"] in ("ACCESSORIES", "CLOTHING", "SHOES")
        assert (row["website_name"], row["country_code"], row["currency_code"]) == ("SYNTHETIC", "USA", "USD")
    assert len({row["product_code"] for row in rows}) == 400
    assert all(80_000_000 <= row["product_code"] < 80_000_000 + 7 * 400 for row in rows)
    assert Counter(row["category3_code"] for row in rows) == {category: 50 for category in S.CATEGORIES}
    assert sorted(os.listdir(image_dir)) == sorted(row["imageurl"] for row in rows)
    for row in rows[:40]:
        with Image.open(os.path.join(image_dir, row["imageurl"])) as image:
            aspect = S.FRAME_ASPECT[row["category3_code"]]
            expected = (round(224 * aspect), 224) if aspect >= 1 else (224, round(224 / aspect))
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", expected)
            assert min(image.size) == 224


def test_framing_gives_categories_different_token_counts():
    from phi3v.modeling import Phi3VImageProcessor

    processor = Phi3VImageProcessor(num_crops=16)
    counts = {}
    for category, aspect in S.FRAME_ASPECT.items():
        size = (round(224 * aspect), 224) if aspect >= 1 else (224, round(224 / aspect))
        counts[category] = processor.num_image_tokens(*size)
    assert (counts["SCARVES"], counts["SHOES"], counts["BAGS"], counts["TRENCH COATS"]) == (2353, 1921, 2509, 1933)


def test_titles_are_composed_from_visible_attributes():
    def title(*args):
        return S.title_of(ProductAttributes(*args))

    assert title("SCARVES", "camel", "cashmere", "medium", True) == "Vintage Check Cashmere Scarf"
    assert title("BAGS", "black", "leather", "large", False) == "Large Leather Tote"
    assert title("TRENCH COATS", "beige", "cotton", "large", True) == "Long Vintage Check Cotton Trench Coat"
    assert title("BELTS", "navy", "nylon", "small", True) == "Small Check Nylon Belt"
    assert title("T-SHIRTS", "pink", "silk", "small", False) == "Cropped Silk T-shirt"


def test_duplicate_share_repeats_product_codes(tmp_path):
    rows = generate_catalogue(SyntheticSpec(num_products=200, seed=1, image_size=32, duplicate_share=0.1), tmp_path)
    assert len(rows) == 220
    first: dict[int, dict] = {}
    repeats = []
    for row in rows:
        if row["product_code"] in first:
            repeats.append(row)
        else:
            first[row["product_code"]] = row
    assert len(first) == 200 and len(repeats) == 20
    assert len(os.listdir(tmp_path)) == 200  # a repeat is a re-scrape of the same product and image
    for row in repeats:
        original = first[row["product_code"]]
        assert (row["title"], row["imageurl"], row["full_price"]) == (
            original["title"], original["imageurl"], original["full_price"]
        )  # fmt: skip
    assert rows[:200] == generate_catalogue(SyntheticSpec(num_products=200, seed=1, image_size=32), tmp_path / "none")


# ---------------------------------------------------------------------------------------------
# Prices


def test_prices_are_rounded_in_range_and_discounts_consistent(catalogue):
    rows, _ = catalogue
    low, high = S.PRICE_RANGE
    for row in rows:
        for usd in (row["full_price"], row["price"]):
            assert low <= usd <= high
            assert usd == int(usd) and int(usd) % 10 == 0
        assert row["price"] <= row["full_price"]
        assert row["flg_discount"] == int(row["price"] < row["full_price"])
        if row["flg_discount"]:
            assert row["price"] == S._round_price(row["full_price"] * S.DISCOUNT_FACTOR)
        assert row["full_price_eur"] == round(row["full_price"] * 0.92, 2)
        assert row["price_eur"] == round(row["price"] * 0.92, 2)
    discounted = sum(row["flg_discount"] for row in rows) / len(rows)
    assert 0.05 < discounted < 0.15


def test_every_attribute_combination_prices_inside_the_range():
    low, high = S.PRICE_RANGE
    prices = []
    for category, materials in S.MATERIALS_BY_CATEGORY.items():
        for material, size, check, noise in itertools.product(materials, S.SIZES, (False, True), (-0.03, 0.03)):
            full = price_of(ProductAttributes(category, "black", material, size, check, price_noise=noise))
            prices += [full, S._round_price(full * S.DISCOUNT_FACTOR)]
    assert low <= min(prices) and max(prices) <= high
    assert (min(prices), max(prices)) == (150.0, 3010.0)


def test_price_is_monotone_in_visible_attributes():
    def price(category="BAGS", material="leather", size="medium", check=False):
        return price_of(ProductAttributes(category, "grey", material, size, check))

    assert price_of(ProductAttributes("BAGS", "grey", "leather", "medium", False)) == 1870.0  # 1290 x 1.45
    for category in S.CATEGORIES:
        material = S.MATERIALS_BY_CATEGORY[category][0]
        assert price(category, material, check=True) > price(category, material, check=False)
        assert (
            price(category, material, "large")
            > price(category, material, "medium")
            > price(category, material, "small")
        )
    assert price("BAGS", "leather") > price("BAGS", "cotton") > price("BAGS", "nylon")
    assert (
        price("SCARVES", "cashmere") > price("SCARVES", "silk") > price("SCARVES", "wool") > price("SCARVES", "cotton")
    )
    # colour, position, background and texture do not move the price; the noise moves it by at most 3% (+ rounding)
    base = ProductAttributes("SHOES", "red", "leather", "large", True)
    for other in ("black", "pink"):
        assert price_of(
            ProductAttributes("SHOES", other, "leather", "large", True, 0.0, 77, 0.5, -0.5, 240)
        ) == price_of(base)
    assert (
        abs(price_of(ProductAttributes("SHOES", "red", "leather", "large", True, 0.03)) / price_of(base) - 1) <= 0.035
    )


def test_title_and_category_determine_the_price_up_to_noise(catalogue):
    rows, _ = catalogue
    groups = defaultdict(list)
    for row in rows:
        groups[row["category3_code"], row["title"]].append(row["full_price"])
    repeated = [prices for prices in groups.values() if len(prices) > 1]
    assert len(repeated) > 30
    for prices in repeated:  # +-3% noise and rounding to 10: at most ~6% + 10 apart
        assert max(prices) <= min(prices) * 1.062 + 10


# ---------------------------------------------------------------------------------------------
# Learnable from pixels


@pytest.fixture(scope="module")
def thumbnails(catalogue) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Item thumbnails, category labels, check flags (from the title) and full-size pixels."""
    rows, image_dir = catalogue
    pixels = [_rgb(image_dir, row) for row in rows]
    labels = np.array([S.CATEGORIES.index(row["category3_code"]) for row in rows])
    checks = np.array([" Check " in f" {row['title']} " for row in rows])
    return np.stack([_item_thumbnail(p) for p in pixels]), labels, checks, pixels


def test_category_mean_images_differ(thumbnails):
    images, labels, _, _ = thumbnails
    means = np.stack([images[labels == c].mean(axis=0) for c in range(len(S.CATEGORIES))])
    between = np.abs(means[:, None] - means[None]).mean(axis=(2, 3))[~np.eye(len(S.CATEGORIES), dtype=bool)]
    within = []  # the same statistic between two halves of one category: the sampling-noise floor
    for c in range(len(S.CATEGORIES)):
        members = images[labels == c]
        within.append(np.abs(members[::2].mean(axis=0) - members[1::2].mean(axis=0)).mean())
    assert between.min() > 0.06  # measured 0.090 (seed 5, 400 items)
    assert max(within) < 0.045  # measured 0.036
    assert between.min() > 2 * max(within)


def test_nearest_centroid_reads_category_from_pixels(thumbnails):
    images, labels, _, _ = thumbnails
    flat = images.reshape(len(images), -1)
    train = np.arange(len(flat)) < 300
    centroids = np.stack([flat[train & (labels == c)].mean(axis=0) for c in range(len(S.CATEGORIES))])
    distances = ((flat[~train][:, None] - centroids[None]) ** 2).sum(axis=-1)
    accuracy = (distances.argmin(axis=1) == labels[~train]).mean()
    assert accuracy > 0.8  # measured 0.94


def test_check_pattern_is_detectable(thumbnails):
    _, _, checks, pixels = thumbnails
    edges = np.array([_stripe_edges(p) for p in pixels])
    assert 100 < checks.sum() < 220  # ~40% of products are check
    assert ((edges >= 17) == checks).mean() > 0.95  # measured 1.0: check >= 24 edges, plain <= 10


def test_size_and_material_are_visible():
    extents = []
    for size in S.SIZES:
        pixels = np.asarray(render_product(ProductAttributes("BAGS", "navy", "leather", size, False), 224), np.float32)
        ys, xs = np.nonzero(_foreground(pixels))
        extents.append(xs.max() - xs.min() + 1)
    assert extents == sorted(extents) and extents[0] * 1.4 < extents[2]  # 60% vs 90% of the canvas

    renders = {
        material: np.asarray(
            render_product(ProductAttributes("TRENCH COATS", "camel", material, "large", False), 224), np.float32
        )
        for material in S.MATERIALS
    }
    differences = [np.abs(renders[a] - renders[b]).mean() for a, b in itertools.combinations(S.MATERIALS, 2)]
    assert min(differences) > 3.0  # grey levels over the whole image; measured 5.0


# ---------------------------------------------------------------------------------------------
# Several photos and more fields (issue 22)


def test_second_view_and_attribute_columns(tmp_path):
    spec = SyntheticSpec(num_products=24, seed=2, image_size=64, duplicate_share=0.25)
    plain = generate_catalogue(spec, tmp_path / "plain")
    rows = generate_catalogue(SyntheticSpec(**{**vars(spec), "views": 2, "attribute_columns": True}), tmp_path / "x")
    assert len(rows) == 30
    for row, base in zip(rows, plain):
        assert list(row) == [*SCHEMA, "detail_imageurl", "colour", "material"]
        assert {k: row[k] for k in SCHEMA} == base  # the same products: the options draw nothing
        assert row["detail_imageurl"] == f"{row['product_code']}_detail.jpg"
        assert row["colour"] in S.COLOURS and row["material"] in S.MATERIALS_BY_CATEGORY[row["category3_code"]]
        assert row["material"].capitalize() in row["title"].split()
    first = rows[0]  # pinned like the first row above: colour and material come from the same draws
    assert (first["title"], first["colour"], first["material"]) == ("Oversized Check Wool Scarf", "navy", "wool")
    files = {name: (tmp_path / "x" / name).read_bytes() for name in os.listdir(tmp_path / "x")}
    assert len(files) == 48 and sum(name.endswith("_detail.jpg") for name in files) == 24
    assert {name: data for name, data in files.items() if "_detail" not in name} == _files(tmp_path / "plain")
    with Image.open(tmp_path / "x" / first["detail_imageurl"]) as detail:
        assert (detail.format, detail.size) == ("JPEG", (64, 64))
    only_views = generate_catalogue(SyntheticSpec(**{**vars(spec), "views": 2}), tmp_path / "v")
    assert list(only_views[0]) == [*SCHEMA, "detail_imageurl"]
    with pytest.raises(ValueError, match="invalid spec"):
        generate_catalogue(SyntheticSpec(num_products=2, views=3), tmp_path / "bad")


def test_detail_view_shows_colour_material_and_check():
    def detail(colour="camel", material="wool", check=False) -> np.ndarray:
        image = S.render_detail(ProductAttributes("SCARVES", colour, material, "medium", check, texture_seed=4), 224)
        assert image.size == (224, 224) and image.mode == "RGB"
        return np.asarray(image, np.float32)

    assert np.array_equal(detail(), detail())  # pure
    for colour, rgb in S.COLOURS.items():  # plain wool: the mean is the fill colour (the knit averages out)
        assert np.abs(detail(colour).mean(axis=(0, 1)) - rgb).max() < 2  # measured at most 0.2
    fabrics = {material: detail("grey", material) for material in S.MATERIALS}
    differences = [np.abs(fabrics[a] - fabrics[b]).mean() for a, b in itertools.combinations(S.MATERIALS, 2)]
    assert min(differences) > 6.0  # grey levels over the whole close-up; measured 9.5 (the front view: 5.0)
    assert _stripe_edges(detail(check=True)) > 20 > 5 > _stripe_edges(detail(check=False))  # measured 44 and 1
