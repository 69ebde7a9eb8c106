"""Tier 2/3: predicting with an export, one photo or a whole split, in-process and from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from test_export import ONE_THREAD, REPO, build_adapter, product_image

from phi3v.cli import UsageError
from phi3v.config_schema import register_schemas
from phi3v.data.datamodule import ProductDataModule
from phi3v.data.spec import DataSpec
from phi3v.data.synthetic import SyntheticSpec
from phi3v.inference import load_for_inference, prediction_columns, prediction_rows
from phi3v.predict import check_config, check_fields, main, predict_image, run_data_spec, split_batches
from phi3v.task import FieldSpec, TaskSpec

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    return build_adapter(tmp_path_factory.mktemp("predict") / "adapter")[1]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "bag.png"
    product_image("tan", (260, 340)).save(path)
    return path


def predict_config(*overrides: str) -> DictConfig:
    register_schemas()  # as `python -m phi3v.predict` does before composing
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("predict", overrides=list(overrides))


# ---- in-process --------------------------------------------------------------------------------
def test_batched_split_predictions_equal_one_photo_at_a_time(adapter, tmp_path):
    model, processor, task = load_for_inference(adapter)
    datamodule = ProductDataModule(DataSpec(
        data_dir=str(tmp_path / "data"), synthetic=SyntheticSpec(num_products=12), val_fraction=0.0,
        test_fraction=0.3,
    ))
    datamodule.connect(processor)
    # 4 products: a full and a partial batch
    batches = split_batches(datamodule, processor, task, "test", batch_size=3)
    rows = list(prediction_rows(model, processor, task, batches, MAX_NEW_TOKENS))
    assert [row["product_id"] for row in rows] == datamodule.datasets["test"].table.column("product_id").to_pylist()
    for row in rows:
        assert list(row) == list(prediction_columns(task))
        answer, parsed = predict_image(model, processor, task, row["image_path"], MAX_NEW_TOKENS)
        assert row["prediction"] == answer  # left padding changes nothing
        assert (row["parsed_title"], row["parsed_category"], row["parsed_price"]) == (
            parsed["title"], parsed["category"], parsed["price"]
        )
        assert row["target"].endswith(f"Full Price: {row['true_price']:,.2f}")  # the export's format, not data's


def test_bad_values_are_reported_by_key(adapter, photo, tmp_path):
    cases = [
        ((), "adapter= is required"),
        ((f"adapter={tmp_path / 'nope'}",), "adapter="),
        ((f"adapter={tmp_path}",), "no model_spec.json"),
        ((f"adapter={adapter}", f"image={tmp_path / 'none.jpg'}"), "image="),
        ((f"adapter={adapter}", "split=dev"), "split=dev"),
        ((f"adapter={adapter}", "out=p.parquet"), "out=p.parquet"),
        ((f"adapter={adapter}", "dtype=fp8"), "dtype=fp8"),
    ]
    for overrides, message in cases:
        with pytest.raises(UsageError, match=message):
            check_config(predict_config(*overrides))
    check_config(predict_config(f"adapter={adapter}", f"image={photo}"))


def test_missing_adapter_exits_1_with_one_line_naming_the_key(tmp_path, capsys):
    """The command's body, run in-process: Hydra's runtime (and its logging setup) stays out of the
    test process, and the ~10 s import of a subprocess is saved. tests/test_export.py runs the same
    error path through a real subprocess of `python -m phi3v.export`."""
    with pytest.raises(SystemExit) as exit_info:
        main.__wrapped__(predict_config(f"adapter={tmp_path / 'nope'}", "image=x.jpg"))
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.err == f"error: adapter={tmp_path / 'nope'}: no such directory\n" and captured.out == ""


# ---- the command line ------------------------------------------------------------------------
def run_predict(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "phi3v.predict", f"max_new_tokens={MAX_NEW_TOKENS}", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=ONE_THREAD,
    )


@pytest.mark.slow
@pytest.mark.e2e
def test_predict_cli_one_photo(adapter, photo):
    result = run_predict(f"adapter={adapter}", f"image={photo}")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[-4:]] == ["answer", "title", "category", "price"]
    assert isinstance(json.loads(lines[-4].removeprefix("answer: ")), str)  # one line, whatever was generated


@pytest.mark.slow
@pytest.mark.e2e
def test_predict_cli_whole_test_split(adapter, tmp_path):
    out = tmp_path / "p.jsonl"
    result = run_predict(
        f"adapter={adapter}", "data=sample", f"data.data_dir={tmp_path / 'data'}", "data.synthetic.num_products=20",
        "split=test", f"out={out}", "batch_size=4",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2  # 10% of 20 products
    for row in rows:
        assert list(row) == list(prediction_columns(TaskSpec()))
        assert row["target"].startswith("Product: ") and row["true_price"] > 0
        assert Path(row["image_path"]).is_file()
    assert f"wrote 2 predictions (test split) to {out}" in result.stdout


# ---- the run an export came from -------------------------------------------------------------
RUN_DATA = {  # fractions and seed unlike predict's data defaults: a re-split would pick other products
    "val_fraction": 0.2, "test_fraction": 0.15, "split_seed": 3, "synthetic": {"num_products": 40},
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """What train.py leaves: <run>/adapter, <run>/splits.json and <run>/.hydra/config.yaml."""
    from omegaconf import OmegaConf

    from phi3v.config_schema import typed
    from phi3v.modeling.model_spec import ModelSpec, load_processor

    run = tmp_path_factory.mktemp("run")
    build_adapter(run / "adapter")
    data = {**RUN_DATA, "data_dir": str(run.parent / "run_data")}
    (run / ".hydra").mkdir()
    OmegaConf.save({"data": data, "seed": 0}, run / ".hydra" / "config.yaml")
    datamodule = ProductDataModule(typed(DataSpec, data), output_dir=run)
    datamodule.connect(load_processor(ModelSpec()))
    datamodule.prepare_data()
    datamodule.setup("fit")  # writes splits.json, as in training
    return run


def test_split_test_is_exactly_the_runs_held_out_products(trained_run, tmp_path, capsys):
    from phi3v.predict import run as predict

    out = tmp_path / "p.jsonl"
    cfg = predict_config(f"adapter={trained_run / 'adapter'}", "split=test", f"out={out}", "max_new_tokens=2")
    check_config(cfg)
    predict(cfg)
    predicted = sorted(str(json.loads(line)["product_id"]) for line in out.read_text().splitlines())
    held_out = json.loads((trained_run / "splits.json").read_text())["test"]
    assert predicted == sorted(str(pid) for pid in held_out) and len(predicted) == 6  # 15% of 40
    assert "predicting the test split of run" in capsys.readouterr().out


def test_a_catalogue_the_run_never_saw_is_predicted_whole_and_said_so(tmp_path):
    from phi3v.modeling.model_spec import ModelSpec, load_processor

    run = tmp_path / "run"
    run.mkdir()
    (run / "splits.json").write_text(json.dumps({"train": ["a"], "val": ["b"], "test": ["c"]}))
    datamodule = ProductDataModule(DataSpec(data_dir=str(tmp_path / "data"), synthetic=SyntheticSpec(num_products=9)))
    datamodule.connect(load_processor(ModelSpec()))
    datamodule.prepare_data()
    dataset, description = datamodule.run_products("test", run)
    assert len(dataset) == 9 and "never saw" in description and "all 9 products" in description


def test_a_run_of_an_older_phi3v_reads_its_fields_from_its_mapped_columns(tmp_path):
    """A run recorded before data.task (its fields as data.columns.title/category/price, data.prompt) still
    names its catalogue: the seed task on those columns."""
    from omegaconf import OmegaConf

    (tmp_path / ".hydra").mkdir()
    old = {"source": "shop.csv", "columns": {"image": "photo", "title": "name", "category": "type", "price": "usd",
                                             "id": None},
           "prompt": {"question": "<|image_1|>What is shown in this image?",
                      "answer": "Product: {title}, Category: {category}, Full Price: {price}", "price_format": "{}"}}
    OmegaConf.save({"data": old}, tmp_path / ".hydra" / "config.yaml")
    spec = run_data_spec(tmp_path)
    assert (spec.source, spec.columns.image, spec.columns.id) == ("shop.csv", "photo", None)
    assert [(f.name, f.column, f.type) for f in spec.task.fields] == [
        ("title", "name", "text"), ("category", "type", "category"), ("price", "usd", "number")]


def test_the_catalogues_fields_must_be_the_exports(adapter):
    from phi3v.inference import load_task

    export = load_task(adapter)
    check_fields(TaskSpec(), export)  # the same names and types; the export's price format does not matter
    cars = TaskSpec(fields=(FieldSpec("make", type="category"), FieldSpec("price", type="number")))
    with pytest.raises(UsageError, match=r"the export answers the fields title \(text\), category \(category\), "
                                         r"price \(number\) \(its prompt.json\) but data.task has make \(category\), "
                                         r"price \(number\): set data.task.fields"):
        check_fields(cars, export)


def test_an_export_outside_a_run_needs_a_data_group(adapter):
    with pytest.raises(UsageError, match="data= is required"):
        check_config(predict_config(f"adapter={adapter}", "split=test"))


# ---- one product, several photos (issue 22) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def back(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "back.png"
    product_image("navy", (300, 200)).save(path)
    return path


def test_two_photos_are_one_product_asked_with_a_tag_each_in_order(adapter, photo, back):
    from phi3v.data.images import load_product_image
    from phi3v.inference import greedy_answers

    model, processor, task = load_for_inference(adapter)
    answer, parsed = predict_image(model, processor, task, [photo, back], MAX_NEW_TOKENS)
    inputs = processor(task.prompt(2), [load_product_image(photo), load_product_image(back)], padding_side="left")
    assert sorted(set(inputs["input_ids"][inputs["input_ids"] < 0].tolist())) == [-2, -1]
    assert answer == greedy_answers(model, processor, inputs, MAX_NEW_TOKENS)[0]
    assert parsed == task.parse(answer)
    assert predict_image(model, processor, task, [photo], MAX_NEW_TOKENS)[0] == predict_image(
        model, processor, task, photo, MAX_NEW_TOKENS)[0]  # a one-photo list is the photo


def test_several_image_values_are_a_list_and_a_repeated_key_is_refused(adapter, photo, back, tmp_path):
    from phi3v.predict import check_repeated_image, photo_arguments

    check_config(predict_config(f"adapter={adapter}", f"image=[{photo},{back}]"))
    with pytest.raises(UsageError, match=f"image={tmp_path / 'gone.png'}: no such file"):
        check_config(predict_config(f"adapter={adapter}", f"image=[{photo},{tmp_path / 'gone.png'}]"))
    with pytest.raises(UsageError, match=r"image=\[\]: name at least one photo"):
        check_config(predict_config(f"adapter={adapter}", "image=[]"))
    assert photo_arguments(predict_config(f"adapter={adapter}", f"image=[{photo},{back}]").image) == [
        str(photo), str(back)]
    check_repeated_image(["adapter=x", "image=a.jpg", "split=test"])
    with pytest.raises(UsageError, match=r"image= is given 2 times and only the last would be used: name one "
                                         r"product's photos as a list, image=\[a.jpg,b.jpg\]"):
        check_repeated_image(["adapter=x", "image=a.jpg", "+image=b.jpg"])


@pytest.mark.slow
@pytest.mark.e2e
def test_predict_cli_two_photos_of_one_product(adapter, photo, back):
    result = run_predict(f"adapter={adapter}", f"image=[{photo},{back}]")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[-4:]] == ["answer", "title", "category", "price"]
    repeated = run_predict(f"adapter={adapter}", f"image={photo}", f"image={back}")
    assert repeated.returncode == 1 and repeated.stderr.startswith("error: image= is given 2 times")
