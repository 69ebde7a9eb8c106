"""Tier 2: row validation (each field's cell read by its type), number parsing, answer parsing and splits."""

from __future__ import annotations

import numpy as np
import pytest

from phi3v.data.catalogue import ColumnMap, InvalidValue, validate_rows
from phi3v.data.splits import SPLITS, assign_splits, has_splits, limited_rows, read_splits, run_split_rows, write_splits
from phi3v.data.values import field_value, positive_number
from phi3v.task import FieldSpec, TaskSpec, parse_number, price_from_answer

pytestmark = pytest.mark.unit

SEED = TaskSpec()
CARS = TaskSpec(fields=(FieldSpec("make", type="category"), FieldSpec("year", type="integer"),
                        FieldSpec("mileage", "km", "number"), FieldSpec("price", type="number")))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(490, 490.0), (1250.5, 1250.5), ("1,250.00", 1250.0), ("$490", 490.0), ("490 USD", 490.0),
     ("USD 3,999.99", 3999.99), (" 12 ", 12.0), ("1 250", 1250.0)],
)
def test_prices_are_parsed(value, expected):
    assert positive_number(value) == expected == field_value(SEED.field("price"), value)


@pytest.mark.parametrize("value", ["N.A.", "", None, float("nan"), float("inf"), "inf", -5, "-5", 0, "free", True])
def test_bad_prices_are_rejected(value):
    with pytest.raises(InvalidValue) as raised:
        positive_number(value)
    assert raised.value.reason == "bad_price"
    with pytest.raises(InvalidValue) as raised:
        field_value(CARS.field("mileage"), value)
    assert raised.value.reason == "bad_mileage" and "mileage" in raised.value.detail


@pytest.mark.parametrize(("value", "expected"), [(2019, 2019), (2019.0, 2019), ("2019", 2019), (" 85,000 ", 85000)])
def test_integer_cells_are_whole_numbers(value, expected):
    assert field_value(CARS.field("year"), value) == expected
    assert type(field_value(CARS.field("year"), value)) is int


@pytest.mark.parametrize("value", [2019.5, "2019.5", "9" * 20, 0, "N.A.", None])
def test_an_integer_cell_that_is_not_a_positive_whole_number_drops_its_row(value):
    with pytest.raises(InvalidValue) as raised:
        field_value(CARS.field("year"), value)
    assert raised.value.reason == "bad_year"


def test_category_and_text_cells():
    make, title = CARS.field("make"), SEED.field("title")
    assert [field_value(make, v) for v in (" Audi ", None, " n/a ", float("nan"), 3)] == ["Audi", "N.A.", "N.A.",
                                                                                        "N.A.", "3"]
    assert field_value(title, " Check Scarf ") == "Check Scarf"
    for empty in ("", "  ", None, float("nan")):
        with pytest.raises(InvalidValue) as raised:
            field_value(title, empty)
        assert (raised.value.reason, raised.value.detail) == ("empty_title", "title is empty")


def record(**values):
    base = {"product_code": 1, "title": "Check Scarf", "category3_code": "SCARVES", "full_price": 490.0,
            "imageurl": "https://example.invalid/a"}
    return {**base, **values}


def test_validation_reasons_and_kept_values():
    records = [
        record(product_code=1),
        record(product_code=2, full_price="N.A."),
        record(product_code=3, title="  "),
        record(product_code=4, category3_code="N.A."),
        record(product_code=1, title="Same id again"),
        record(product_code=5, imageurl="N.A."),
        record(product_code=6, full_price="1,250.00", category3_code=None),
        record(product_code=7, full_price=float("nan")),
        record(product_code=8, category3_code=" n/a "),
    ]
    kept, dropped = validate_rows(records, ColumnMap(), SEED)
    assert [(r.product_id, r.values["category"], r.values["price"]) for r in kept] == [
        ("1", "SCARVES", 490.0), ("4", "N.A.", 490.0), ("6", "N.A.", 1250.0), ("8", "N.A.", 490.0)
    ]
    assert kept[0].values == {"title": "Check Scarf", "category": "SCARVES", "price": 490.0}
    assert [(d.source_row, d.reason) for d in dropped] == [
        (1, "bad_price"), (2, "empty_title"), (4, "duplicate_id"), (5, "missing_image"), (7, "bad_price")
    ]


def test_a_car_catalogue_without_title_or_category_validates_by_field_type():
    def car(**values):
        return {"make": "Audi", "year": "2019", "km": "85,000", "price": 23500, "imageurl": "cars/a.png", **values}

    records = [car(), car(year="2019.5"), car(km="N.A."), car(make=""), car(imageurl=""), car(price="-1"),
               car(year=2007.0, km=120000.5)]
    kept, dropped = validate_rows(records, ColumnMap(id=None), CARS)
    assert [r.values for r in kept] == [
        {"make": "Audi", "year": 2019, "mileage": 85000.0, "price": 23500.0},
        {"make": "N.A.", "year": 2019, "mileage": 85000.0, "price": 23500.0},  # a category cell may be empty
        {"make": "Audi", "year": 2007, "mileage": 120000.5, "price": 23500.0},
    ]
    assert [(d.source_row, d.reason) for d in dropped] == [
        (1, "bad_year"), (2, "bad_mileage"), (4, "missing_image"), (5, "bad_price")]
    # the fields are read in task order, then the photo: a row's reason is its first problem
    _, (first,) = validate_rows([car(year="x", km="y", imageurl="")], ColumnMap(id=None), CARS)
    assert (first.reason, first.detail) == ("bad_year", "year is not a number: 'x'")


def test_missing_column_names_the_config_key():
    with pytest.raises(ValueError, match=r"data.columns.image = 'photo' is not a column") as raised:
        ColumnMap(image="photo").check(["imageurl", "title", "category3_code", "product_code"])
    assert "available columns" in str(raised.value)
    with pytest.raises(ValueError, match=r"data.task.fields\[2\].column = 'full_price' \(price\) is not a column"):
        SEED.check_columns(["imageurl", "title", "category3_code", "product_code"])


def test_rows_without_id_column_use_row_numbers():
    kept, _ = validate_rows([record(), record()], ColumnMap(id=None), SEED)
    assert [r.product_id for r in kept] == ["0", "1"]


@pytest.mark.parametrize(
    ("answer", "price"),
    [
        ("Product: Check Scarf, Category: SCARVES, Full Price: 490.0", 490.0),
        ("Product: Trench, Category: COATS, Full Price: $2,290.00 USD<|end|>", 2290.0),
        ("Product: 3 Pack Socks, Category: SOCKS, Full Price: 120", 120.0),
        ("Full Price: 1 250 and then some words 99", 1250.0),
        ("no label but 75.5 at the end", 75.5),
        ("Product: 2 Pack Socks, Category: SOCKS, Price 45", 45.0),  # no label: the last number, not the first
        ("Product: Full Price: 10 Tote, Category: BAGS, Full Price: 490.00", 490.0),  # the last label's number
        ("Product: nothing here", None),
    ],
)
def test_price_from_answer(answer, price):
    assert price_from_answer(answer) == price


def test_template_round_trip_and_custom_format():
    task = TaskSpec(fields=(SEED.field("title"), SEED.field("category"),
                            FieldSpec("price", "full_price", "number", "{:,.2f}", "Full Price")))
    answer = task.answer_for({"title": "Vintage Check Scarf", "category": "SCARVES", "price": 1250.0})
    assert answer == "Product: Vintage Check Scarf, Category: SCARVES, Full Price: 1,250.00"
    assert task.parse(answer + " trailing") == {"title": "Vintage Check Scarf", "category": "SCARVES", "price": 1250.0}
    seed = SEED.answer_for({"title": "A", "category": "B", "price": 1250.0})
    assert seed.endswith("Full Price: 1250.0")  # the seed's format
    spaced = task.parse("Product:  Red  Mug \t, Category:   MUGS  , Full Price: 12.00")
    assert spaced == {"title": "Red  Mug", "category": "MUGS", "price": 12.0}  # ends stripped only
    assert SEED.prompt() == "<|user|>\n<|image_1|>What is shown in this image?<|end|>\n<|assistant|>\n"


def test_template_errors_name_the_key():
    with pytest.raises(ValueError, match=r"data.task.fields\[2\] \(price\) is not in data.task.answer"):
        TaskSpec(answer="Product: {title}, Category: {category}")
    with pytest.raises(ValueError, match=r"data.task.question must hold <\|image_1\|>"):
        TaskSpec(question="What is it?")


def test_parse_number_ignores_non_finite():
    assert parse_number("price: 12.5") == 12.5 and parse_number("none") is None
    assert parse_number("1,000") == 1000.0
    huge = "9" * 400  # a float overflows to inf: no price at all, not an infinite one
    assert parse_number(f"${huge}") is None and parse_number(f"{huge}.5 USD") is None
    assert price_from_answer(f"Product: Scarf, Category: SCARVES, Full Price: {huge}") is None


def test_splits_are_grouped_deterministic_and_sized():
    ids = [f"p{i // 2}" for i in range(400)]  # every product on two rows
    first = assign_splits(ids, 0.1, 0.2, seed=7)
    assert np.array_equal(first, assign_splits(ids, 0.1, 0.2, seed=7))
    assert not np.array_equal(first, assign_splits(ids, 0.1, 0.2, seed=8))
    by_product = {}
    for pid, split in zip(ids, first):
        assert by_product.setdefault(pid, split) == split  # both rows of a product in one split
    counts = {s: sum(v == s for v in by_product.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 140, "val": 20, "test": 40}


def test_limit_is_a_deterministic_subset():
    rows = limited_rows(100, 10, seed=1)
    assert len(rows) == 10 and list(rows) == sorted(rows) and np.array_equal(rows, limited_rows(100, 10, seed=1))
    assert len(limited_rows(5, None, 0)) == 5 and len(limited_rows(5, 50, 0)) == 5
    with pytest.raises(ValueError, match="data.limit"):
        limited_rows(5, 0, 0)


def test_a_runs_splits_are_recorded_and_read_back(tmp_path):
    assert not has_splits(tmp_path)
    path = write_splits(tmp_path, ["b", "a", "c", "a", 7], np.array(["train", "train", "val", "train", "test"]))
    assert path == tmp_path / "splits.json" and has_splits(tmp_path)
    assert read_splits(tmp_path) == {"train": {"a", "b"}, "val": {"c"}, "test": {"7"}}  # ids as strings


# A run's splits and a catalogue that holds all of them but "val-2", plus "new" the run never saw.
RUN = {"train": ["t1", "t2", "t3"], "val": ["v1", "val-2"], "test": ["x1", "x2"]}
CATALOGUE = ["x2", "t1", "new", "v1", "t3", "x1", "t2"]  # manifest order


@pytest.mark.parametrize(("split", "rows", "missing"), [
    ("train", [1, 4, 6], ""), ("val", [3], ", 1 of its 2 are not in this catalogue"), ("test", [0, 5], "")])
def test_every_split_of_a_run_selects_exactly_its_products_in_manifest_order(tmp_path, split, rows, missing):
    write_splits(tmp_path, [pid for ids in RUN.values() for pid in ids],
                 np.array([name for name, ids in RUN.items() for _ in ids]))
    selected, description = run_split_rows(CATALOGUE, tmp_path, split, "sample (data/sample)")
    assert selected.tolist() == rows
    assert description == (f"predicting the {split} split of run {tmp_path} (its splits.json): {len(rows)} products"
                           + missing)


def test_a_catalogue_the_run_never_saw_is_selected_whole(tmp_path):
    write_splits(tmp_path, ["a", "b"], np.array(["train", "test"]))
    for split in SPLITS:
        rows, description = run_split_rows(["c", "d", "e"], tmp_path, split, "table (data/t)")
        assert rows.tolist() == [0, 1, 2]
        assert description == (f"the run {tmp_path} never saw catalogue table (data/t): predicting all 3 products, "
                               f"split={split} does not apply")
    with pytest.raises(ValueError, match="split=dev: choose one of train, val, test"):
        run_split_rows(["c"], tmp_path, "dev", "table")
