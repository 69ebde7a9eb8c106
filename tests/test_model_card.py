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
from phi3v.task import PromptTemplate

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


def test_metrics_table_and_file_round_trip(tmp_path):
    results = RunResults("synthetic", {"val": {"price_mape": 12.3456, "price_mae": math.nan, "count": 8.0},
                                       "test": {"price_mape": 20.0, "count": 8.0}})
    assert results_section(results).splitlines()[-5:] == [
        "| metric | val | test |", "|---|---|---|", "| price_mape | 12.35 | 20 |", "| price_mae | n/a | n/a |",
        "| count | 8 | 8 |",
    ]
    results.save(tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["scores"]["val"]["price_mae"] is None  # JSON: no NaN
    assert RunResults.load(tmp_path).scores["val"] == {"price_mape": 12.3456, "price_mae": None, "count": 8.0}
    assert RunResults.load(tmp_path / "nowhere") is None
    assert results_section(None).startswith("No metrics recorded")
    assert results_section(RunResults("synthetic", {})).startswith("No metrics recorded")  # a run that never evaluated


def test_card_header_and_text_for_each_kind_of_weights():
    template = PromptTemplate(price_format="{:,.2f}")
    full = ModelCard(model_card(CardFacts(ModelSpec("microsoft/Phi-3-vision-128k-instruct"), template, "full"), "out"))
    assert (full.data.library_name, full.data.base_model) == ("transformers", "microsoft/Phi-3-vision-128k-instruct")
    assert "fully fine-tuned" in full.text and "Prices are written with `{:,.2f}`" in full.text
    assert "The training data was not recorded" in full.text and "loads with phi3v only" in full.text
    with pytest.raises(ValueError, match="weights must be one of"):
        CardFacts(ModelSpec(), template, "lora")
