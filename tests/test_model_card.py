"""Tier 2 units: the model card's header facts (base hub id, hub dataset), its metrics table and metrics.json.
Cards written by real exports are checked in test_export_layout.py."""

from __future__ import annotations

import json
import math

import pytest
from huggingface_hub import ModelCard

from phi3v.modeling.model_spec import ModelSpec
from phi3v.shipping.model_card import (
    CardFacts,
    RunResults,
    hub_model_id,
    is_hub_dataset,
    model_card,
    results_section,
)
from phi3v.task import FieldSpec, TaskSpec, task_from_record

pytestmark = pytest.mark.unit


def test_the_base_hub_id_from_an_id_a_cached_snapshot_or_nothing(tmp_path):
    assert hub_model_id(ModelSpec("microsoft/Phi-3.5-vision-instruct")) == "microsoft/Phi-3.5-vision-instruct"
    cached = tmp_path / "models--microsoft--Phi-3-vision-128k-instruct" / "snapshots" / "abc123"
    cached.mkdir(parents=True)
    assert hub_model_id(ModelSpec(str(cached))) == "microsoft/Phi-3-vision-128k-instruct"
    assert hub_model_id(ModelSpec(str(tmp_path))) is None  # a plain local directory: no id to claim
    assert hub_model_id(ModelSpec("tiny")) is None and hub_model_id(ModelSpec("random:phi3v")) is None


def test_only_hub_datasets_go_into_the_header(tmp_path, monkeypatch):
    assert is_hub_dataset("DBQ/Burberry.Product.prices.United.States")
    for local in ("synthetic", "data/products.csv", "shop/items.PARQUET", "./shop/items", "/data/x", "a/b/c", "a/"):
        assert not is_hub_dataset(local), local
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shop" / "photos").mkdir(parents=True)  # a local image folder spelled like an id
    assert not is_hub_dataset("shop/photos") and is_hub_dataset("shop/other")


SEED = TaskSpec()
CARS = TaskSpec(fields=(FieldSpec("make", type="category"), FieldSpec("year", type="integer"),
                        FieldSpec("mileage", "km", "number", "{:,.0f} km")), question="<|image_1|>Which car is this?")


def test_metrics_table_and_file_round_trip(tmp_path):
    results = RunResults("synthetic", {"val": {"price_mape": 12.3456, "price_mae": math.nan, "count": 8.0},
                                       "test": {"price_mape": 20.0, "count": 8.0}})
    assert results_section(results, SEED).splitlines()[-12:] == [
        "### price (number)", "",
        "| metric | val | test |", "|---|---|---|", "| price_mae | n/a | n/a |", "| price_mape | 12.35 | 20 |", "",
        "### whole answer", "",
        "| metric | val | test |", "|---|---|---|", "| count | 8 | 8 |",
    ]
    results.save(tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["scores"]["val"]["price_mae"] is None  # JSON: no NaN
    assert RunResults.load(tmp_path).scores["val"] == {"price_mape": 12.3456, "price_mae": None, "count": 8.0}
    assert RunResults.load(tmp_path / "nowhere") is None
    assert results_section(None, SEED).startswith("No metrics recorded")
    assert results_section(RunResults("synthetic", {}), SEED).startswith("No metrics recorded")  # never evaluated


def test_one_metrics_table_per_field_in_task_order():
    scores = {"make_accuracy": 0.75, "make_macro_f1": 0.5, "year_mape": 0.1, "year_exact_match": 0.25,
              "mileage_mape": 18.5, "parse_rate": 1.0, "count": 40.0, "val_seconds": 3.0}
    text = results_section(RunResults("cars.csv", {"val": scores}), CARS)
    assert [line for line in text.splitlines() if line.startswith("###")] == [
        "### make (category)", "### year (integer)", "### mileage (number)", "### whole answer"]
    make, year, mileage, whole = text.split("### ")[1:]
    assert "| make_accuracy | 0.75 |\n| make_macro_f1 | 0.5 |" in make and "year" not in make
    assert "| year_mape | 0.1 |\n| year_exact_match | 0.25 |" in year  # in METRICS order, not recorded order
    assert "| mileage_mape | 18.5 |" in mileage
    assert "| parse_rate | 1 |\n| count | 40 |\n| val_seconds | 3 |" in whole  # keys of no field come last


def test_card_header_and_text_for_each_kind_of_weights():
    task = task_from_record({"answer": "Product: {title}, Category: {category}, Full Price: {price}",
                             "price_format": "{:,.2f}"})
    full = ModelCard(model_card(CardFacts(ModelSpec("microsoft/Phi-3-vision-128k-instruct"), task, "full"), "out"))
    assert (full.data.library_name, full.data.base_model) == ("transformers", "microsoft/Phi-3-vision-128k-instruct")
    assert "fully fine-tuned" in full.text and "| price | full_price | number | `{:,.2f}` |" in full.text
    assert "answer with its title, category and price." in full.text
    assert "The training data was not recorded" in full.text and "loads with phi3v only" in full.text
    with pytest.raises(ValueError, match="weights must be one of"):
        CardFacts(ModelSpec(), task, "lora")


def test_a_car_cards_prompt_fields_and_metrics():
    results = RunResults("cars.csv", {"test": {"make_accuracy": 0.5, "year_exact_match": 0.25, "count": 8.0}})
    card = ModelCard(model_card(CardFacts(ModelSpec(), CARS, "adapter", results), "out"))
    assert "answer with its make, year and mileage." in card.text
    assert ("<|user|>\n<|image_1|>Which car is this?<|end|>\n<|assistant|>\n"
            "Make: {make}, Year: {year}, Mileage: {mileage}<|end|>") in card.text
    assert "\n".join(["| field | column | type | format |", "|---|---|---|---|",
                      "| make | make | category | as Python writes it |",
                      "| year | year | integer | as Python writes it |",
                      "| mileage | km | number | `{:,.0f} km` |"]) in card.text
    assert "### make (category)" in card.text and "| year_exact_match | 0.25 |" in card.text
