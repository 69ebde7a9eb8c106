"""Tier 3: `experiment=multiview` (issue 22), two photos of every synthetic item and four fields (the colour
added), trains end to end on CPU: a small run in a subprocess, its summary a table per field, its predictions
listing both photos and the colour's columns, the demo's gallery showing them."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from summary_text import field_tables, split_lines

from phi3v.config_schema import register_schemas
from phi3v.inference import photo_paths

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "data.synthetic.num_products=40", "data.val_fraction=0.125", "data.test_fraction=0.125", "data.batch_size=4",
    "data.eval_batch_size=8", "evaluation.max_new_tokens=16", "trainer.max_steps=4",
    "trainer.val_check_interval=4",  # the epoch has 8 batches: validate after the 4 this run trains
    "hardware.threads=1", "logger=none", "export=true",
]


@pytest.mark.config
def test_multiview_is_the_demo_with_a_second_photo_column():
    register_schemas()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        demo, multiview = compose("train"), compose("train", overrides=["experiment=multiview"])
    assert list(multiview.data.columns.image) == ["imageurl", "detail_imageurl"]
    assert (multiview.data.synthetic.views, multiview.data.synthetic.attribute_columns) == (2, True)
    assert multiview.data.photos.max_per_item == 2 and multiview.data.data_dir == "data/multiview"
    for key in ("model", "optimizer", "scheduler", "hardware"):
        assert demo[key] == multiview[key], key
    assert demo.data.task.question == multiview.data.task.question  # its one <|image_1|> stands for both photos
    fields = [(f.name, f.column, f.type) for f in multiview.data.task.fields]
    assert fields == [("title", "title", "text"), ("category", "category3_code", "category"),
                      ("colour", "colour", "category"), ("price", "full_price", "number")]
    assert list(multiview.data.task.fields[:2]) + [multiview.data.task.fields[3]] == list(demo.data.task.fields)


@pytest.mark.slow
def test_a_small_multiview_run_trains_and_lists_both_photos(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "train.py", "experiment=multiview", f"hydra.run.dir={run}", f"data.data_dir={data}", *SMALL],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for split in ("val", "test"):
        tables = field_tables(split_lines(result.stdout, split))
        assert list(tables) == ["price (number)", "category (category)", "colour (category)", "title (text)"]
        assert tables["colour (category)"][1][0] == "colour_accuracy"
    assert split_lines(result.stdout, "test")[0].startswith("test: 5 answers")
    assert "python -m phi3v.predict adapter=" in result.stdout and "image=[<photo1>,<photo2>]" in result.stdout
    manifest = pq.read_table(data / "manifest.parquet")
    assert {len(paths) for paths in manifest.column("image_paths").to_pylist()} == {2}
    rows = list(csv.DictReader((run / "predictions" / "test.csv").open(newline="")))
    assert len(rows) == 5
    assert {"parsed_colour", "true_colour", "colour_match"} <= set(rows[0])
    for row in rows:
        front, detail = map(Path, photo_paths(row))
        assert front.is_file() and detail.name == f"{row['product_id']}_detail.jpg" and detail.is_file()

    from phi3v.demo.gallery import load_gallery
    from phi3v.inference import load_task

    gallery = load_gallery(run, load_task(run / "adapter"))
    assert [len(item.image_paths) for item in gallery] == [2] * 5
