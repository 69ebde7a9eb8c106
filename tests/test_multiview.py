"""Tier 3: `experiment=multiview` (issue 22), two photos of every synthetic item, trains end to end on CPU: a
small run in a subprocess, its predictions listing both photos, the demo's gallery showing them."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from phi3v.config_schema import register_schemas
from phi3v.inference import photo_paths

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "data.synthetic.num_products=40", "data.val_fraction=0.125", "data.test_fraction=0.125", "data.batch_size=4",
    "data.eval_batch_size=8", "evaluation.max_new_tokens=16", "trainer.max_steps=4", "hardware.threads=1",
    "logger=none", "export=true",
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


@pytest.mark.slow
def test_a_small_multiview_run_trains_and_lists_both_photos(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "train.py", "experiment=multiview", f"hydra.run.dir={run}", f"data.data_dir={data}", *SMALL],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test: 5 answers" in result.stdout and "metric             | model" in result.stdout
    manifest = pq.read_table(data / "manifest.parquet")
    assert {len(paths) for paths in manifest.column("image_paths").to_pylist()} == {2}
    rows = list(csv.DictReader((run / "predictions" / "test.csv").open(newline="")))
    assert len(rows) == 5
    for row in rows:
        front, detail = map(Path, photo_paths(row))
        assert front.is_file() and detail.name == f"{row['product_id']}_detail.jpg" and detail.is_file()

    from phi3v.demo.gallery import load_gallery
    from phi3v.inference import load_task

    gallery = load_gallery(run, load_task(run / "adapter"))
    assert [len(item.image_paths) for item in gallery] == [2] * 5
