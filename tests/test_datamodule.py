"""Tier 2/3: the synthetic catalogue through prepare -> splits -> loaders -> batches."""

from __future__ import annotations

import json
from dataclasses import replace

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.trainer.states import TrainerFn, TrainerState

from phi3v.data.datamodule import ProductDataModule, default_data_dir
from phi3v.data.manifest import MANIFEST, REPORT
from phi3v.data.spec import DataSpec
from phi3v.data.synthetic import SyntheticSpec
from phi3v.modeling import IGNORE_INDEX, build_tiny_model
from phi3v.modeling.batch import eval_inputs, model_inputs

pytestmark = pytest.mark.unit

PRODUCTS = 60


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sample")
    module = ProductDataModule(DataSpec(data_dir=str(data_dir), synthetic=SyntheticSpec(num_products=PRODUCTS, seed=1)))
    report = module.prepare_data()
    return data_dir, report


def make(data_dir, processor, output_dir=None, **kwargs) -> ProductDataModule:
    spec = DataSpec(data_dir=str(data_dir), synthetic=SyntheticSpec(num_products=PRODUCTS, seed=1), **kwargs)
    module = ProductDataModule(replace(spec, batch_size=4), output_dir)
    module.connect(processor)
    module.setup("fit")
    return module


def test_prepare_writes_manifest_report_and_is_reused(prepared):
    data_dir, report = prepared
    assert report.kept == PRODUCTS and report.dropped == {}
    assert (data_dir / MANIFEST).is_file()
    assert json.loads((data_dir / REPORT).read_text())["kept"] == PRODUCTS
    again = ProductDataModule(DataSpec(data_dir=str(data_dir), synthetic=SyntheticSpec(num_products=PRODUCTS, seed=1)))
    assert again.prepare_data() is None  # up to date: nothing regenerated
    changed = ProductDataModule(replace(again.spec, synthetic=SyntheticSpec(num_products=PRODUCTS, seed=2)))
    assert not changed._manifest_is_current()


def test_the_manifest_holds_each_field_typed_and_a_changed_field_prepares_again(prepared, tmp_path):
    import pyarrow.parquet as pq

    from phi3v.data.dataset import read_manifest
    from phi3v.task import FieldSpec, TaskSpec

    data_dir, _ = prepared
    schema = pq.read_schema(data_dir / MANIFEST)
    assert [(name, str(schema.field(name).type)) for name in ("title", "category", "price")] == [
        ("title", "string"), ("category", "string"), ("price", "double")]
    module = ProductDataModule(DataSpec(data_dir=str(data_dir), synthetic=SyntheticSpec(num_products=PRODUCTS, seed=1)))
    assert module._manifest_is_current()
    # the synthetic catalogue's colour and material as fields (attribute columns on): a manifest of those fields
    fields = (FieldSpec("category", "category3_code", "category"), FieldSpec("colour", type="category"),
              FieldSpec("material", type="category"), FieldSpec("price", "full_price", "number"))
    spec = DataSpec(data_dir=str(tmp_path / "attrs"), task=TaskSpec(fields),
                    synthetic=SyntheticSpec(num_products=12, seed=1, attribute_columns=True))
    attrs = ProductDataModule(spec)
    attrs.prepare_data()
    table = read_manifest(tmp_path / "attrs" / MANIFEST, spec.task)
    assert {"colour", "material"} <= set(table.column_names) and "title" not in table.column_names
    assert all(table.column("colour").to_pylist())
    moved = replace(spec, task=TaskSpec((*fields[:3], FieldSpec("price", "full_price", "integer"))))
    assert not ProductDataModule(moved)._manifest_is_current()  # a field's type changed: prepared again
    with pytest.raises(ValueError, match=r"lacks columns \['title'\]; re-run `python -m phi3v.prepare`"):
        read_manifest(tmp_path / "attrs" / MANIFEST, TaskSpec())


def test_a_field_named_like_a_manifest_column_fails_at_once(tmp_path):
    from phi3v.task import FieldSpec, TaskSpec

    task = TaskSpec((FieldSpec("title"), FieldSpec("source_row", "row", "integer")))
    with pytest.raises(ValueError, match=r"data.task.fields\[1\].name 'source_row' is a column the manifest keeps "
                                         r"for itself \(product_id, image_paths, .*\): rename the field"):
        ProductDataModule(DataSpec(data_dir=str(tmp_path), task=task))


def test_splits_lengths_and_batches(prepared, processor, tmp_path):
    data_dir, _ = prepared
    module = make(data_dir, processor, output_dir=str(tmp_path))
    sizes = {name: len(d) for name, d in module.datasets.items()}
    assert sizes == {"train": 48, "val": 6, "test": 6}
    recorded = json.loads((tmp_path / "splits.json").read_text())
    assert recorded["counts"] == sizes
    assert not set(recorded["train"]) & (set(recorded["val"]) | set(recorded["test"]))

    batch = next(iter(module.train_dataloader()))
    meta = batch.pop("meta")
    assert batch["input_ids"].shape[0] == 4 and meta["skipped_images"] == 0
    # the sampler's token lengths are exactly the collated lengths
    index = [module.datasets["train"].value("product_id", i) for i in range(len(module.datasets["train"]))]
    truth = module.truth("train")  # each row's true fields travel with it, keyed by name
    assert meta["truth"] == [truth[index.index(pid)] for pid in meta["product_id"]]
    assert list(truth[0]) == ["title", "category", "price"]
    assistant = processor.tokenizer.convert_tokens_to_ids("<|assistant|>")
    for row, product_id in enumerate(meta["product_id"]):
        length = int(batch["attention_mask"][row].sum())
        assert length == module.lengths["train"][index.index(product_id)]
        supervised = (batch["labels"][row] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert supervised == list(range(supervised[0], length))  # one span, up to the last real token
        assert batch["labels"][row][supervised].tolist() == batch["input_ids"][row][supervised].tolist()
        assert batch["input_ids"][row][supervised[0] - 1] == assistant  # the prompt's end is not supervised
        text = processor.decode(batch["labels"][row][supervised], skip_special_tokens=False)
        assert text == meta["target"][row] + "<|end|>"
    model = build_tiny_model(seed=0)
    assert torch.isfinite(model(**model_inputs(batch)).loss)


def test_sampler_lengths_equal_collated_lengths_for_photos_of_every_shape(processor, tmp_path):
    """Every sample of a catalogue whose photos differ in size and aspect ratio (so in image tokens) and
    whose answers differ in length: the length the sampler groups by, counted from the manifest's image
    sizes without opening a photo, is the collated row's length."""
    from PIL import Image

    sizes = [(64, 48), (900, 120), (336, 1000), (500, 500), (1400, 700), (40, 400), (700, 333)]
    rows = []
    for i, (width, height) in enumerate(sizes):
        Image.new("RGB", (width, height), (30 * i, 90, 160)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'Wide ' * i}Bag {i},BAGS,{1250.5 * (i + 1)},{i}")
    table = tmp_path / "catalogue.csv"
    table.write_text("imageurl,title,category3_code,full_price,product_code\n" + "\n".join(rows) + "\n")
    module = ProductDataModule(DataSpec(source=str(table), data_dir=str(tmp_path / "data"), val_fraction=0.0,
                                        test_fraction=0.0, batch_size=3, group_by_length=False))
    module.connect(processor)
    module.prepare_data()
    module.setup("fit")
    dataset = module.datasets["train"]
    assert len(dataset) == len(sizes) and len(set(module.lengths["train"].tolist())) == len(sizes)
    seen = []
    for batch in module.train_dataloader():
        for row, index in enumerate(batch["meta"]["index"]):
            seen.append(index)
            assert int(batch["attention_mask"][row].sum()) == module.lengths["train"][index]
    assert set(seen) == set(range(len(sizes)))  # every sample (padding repeats one to fill the last batch)


def tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    values = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list | tuple) else []
    return [t for value in values for t in tensors(value)]


def test_eval_batches_hold_pixels_once_and_left_pad(prepared, processor):
    data_dir, _ = prepared
    module = make(data_dir, processor)
    batch = next(iter(module.val_dataloader()))
    # Every tensor once: the loader's pinning and Lightning's copy to the device visit each leaf, so a
    # pixel tensor shared by the loss and generation inputs would be pinned and copied twice.
    leaves = tensors(batch)
    assert len({id(t) for t in leaves}) == len(leaves)
    moved = move_data_to_device(batch, torch.device("meta"))  # what Lightning does with each batch
    assert eval_inputs(moved, "loss")["pixel_values"] is eval_inputs(moved, "generate")["pixel_values"]
    assert eval_inputs(moved, "loss")["pixel_values"].device.type == "meta"
    assert torch.equal(eval_inputs(batch, "loss")["image_sizes"], batch["image_sizes"])
    generate = eval_inputs(batch, "generate")
    assert (generate["attention_mask"][:, -1] == 1).all()  # left padding: every row ends with a token
    assert "labels" not in generate and "labels" in batch["loss"]
    assert len(batch["meta"]["target"]) == generate["input_ids"].shape[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_eval_pixels_are_pinned_and_copied_to_the_gpu_once(prepared, processor):
    data_dir, _ = prepared
    batch = next(iter(make(data_dir, processor, pin_memory=True).val_dataloader()))
    assert batch["pixel_values"].is_pinned()
    moved = move_data_to_device(batch, torch.device("cuda"))
    pixels = eval_inputs(moved, "loss")["pixel_values"]
    assert pixels.is_cuda and pixels is eval_inputs(moved, "generate")["pixel_values"]


def test_loader_workers_persist_and_pin_memory(prepared, processor):
    data_dir, _ = prepared
    module = make(data_dir, processor, num_workers=2, pin_memory=True)
    loaders = [module.train_dataloader(), module.val_dataloader(), module.test_dataloader()]
    assert all(loader.persistent_workers and loader.pin_memory and loader.num_workers == 2 for loader in loaders)
    without_workers = make(data_dir, processor)  # DataLoader refuses persistent workers without workers
    assert not any(loader.persistent_workers for loader in (without_workers.train_dataloader(),
                                                            without_workers.val_dataloader()))


class FakeTrainer:
    def __init__(self, fn: TrainerFn):
        self.state = TrainerState(fn=fn)


def products(loader) -> list[str]:
    return [p for batch in loader for p, s in zip(batch["meta"]["product_id"], batch["meta"]["supervised"]) if s]


def test_validations_in_training_score_the_same_val_limit_products_and_validate_scores_all(prepared, processor):
    data_dir, _ = prepared
    module = make(data_dir, processor, val_limit=4)
    every = products(module.val_dataloader())  # outside a trainer: the whole split
    assert len(every) == len(set(every)) == len(module.datasets["val"]) == 6
    module.trainer = FakeTrainer(TrainerFn.FITTING)
    first, second = products(module.val_dataloader()), products(module.val_dataloader())
    assert len(first) == 4 and len(set(first)) == 4 and set(first) < set(every) and sorted(first) == sorted(second)
    ids = module.datasets["val"].table.column("product_id").to_pylist()
    assert sorted(first) == sorted(ids[i] for i in module.val_subset())
    drawn = set()  # a draw from the whole split seeded by data.split_seed, not its first val_limit products
    for seed in range(20):
        module.spec = replace(module.spec, split_seed=seed)
        drawn |= set(module.val_subset().tolist())
    assert drawn == set(range(6))
    module.trainer = FakeTrainer(TrainerFn.VALIDATING)  # train.py validates the whole split after fit
    assert sorted(products(module.val_dataloader())) == sorted(every)
    assert make(data_dir, processor, val_limit=10).val_subset() is None  # more than the split: all of it
    with pytest.raises(ValueError, match="data.val_limit"):
        make(data_dir, processor, val_limit=0)


def test_limit_and_group_by_length_reduce_padding(prepared, processor):
    data_dir, _ = prepared
    small = make(data_dir, processor, limit=20)
    assert sum(len(d) for d in small.datasets.values()) == 20
    from phi3v.data.sampler import padding_share

    grouped, plain = make(data_dir, processor), make(data_dir, processor, group_by_length=False)
    shares = []
    for module in (grouped, plain):
        module.train_dataloader()
        shares.append(padding_share(module.lengths["train"], list(module.train_sampler)))
    # 0.009 vs 0.107 on this catalogue: grouping must cut the padding several-fold, not merely not add to it
    assert shares[1] > 0.05
    assert shares[0] * 5 < shares[1], shares


def test_unreadable_image_is_skipped_and_counted_or_fails_when_strict(prepared, processor, tmp_path):
    data_dir, _ = prepared
    module = make(data_dir, processor)
    dataset = module.datasets["val"]
    victim = dataset.image_files(0)[0]
    original = victim.read_bytes()
    try:
        victim.write_bytes(b"<html>not an image</html>")
        batch = next(iter(module.val_dataloader()))
        meta = batch["meta"]
        assert meta["skipped_images"] == 1
        # kept with a white placeholder photo (every rank runs the same graph) but unsupervised
        assert len(meta["product_id"]) == len(dataset)
        victim_row = meta["index"].index(0)
        assert meta["supervised"] == [row != victim_row for row in range(len(dataset))]
        labels = batch["loss"]["labels"]
        assert (labels[victim_row] == -100).all() and (labels[1 - victim_row] != -100).any()
        strict = make(data_dir, processor, strict_images=True)
        with pytest.raises(ValueError, match=str(victim.name)):
            next(iter(strict.val_dataloader()))
    finally:
        victim.write_bytes(original)


def test_default_data_dirs():
    assert str(default_data_dir("synthetic")) == "data/sample"
    assert str(default_data_dir("DBQ/Burberry.Product.prices.United.States")) == (
        "data/DBQ__Burberry.Product.prices.United.States"
    )
    assert str(default_data_dir("/x/y/my products.csv")) == "data/my__products"


def test_padding_repeats_are_collated_without_labels(prepared, processor):
    from phi3v.data.collate import Phi3VCollator
    from phi3v.data.sampler import PaddingIndex

    module = make(prepared[0], processor)
    dataset = module.datasets["train"]
    batch = Phi3VCollator(processor, module.task, "train")([dataset[0], dataset[PaddingIndex(0)]])
    # the repeat fills a distributed batch only: same inputs as the real sample, nothing supervised
    assert batch["meta"]["supervised"] == [True, False] and batch["meta"]["skipped_images"] == 0
    assert torch.equal(batch["input_ids"][0], batch["input_ids"][1])
    assert (batch["labels"][0] != IGNORE_INDEX).any() and (batch["labels"][1] == IGNORE_INDEX).all()


def test_baselines_are_fitted_on_the_train_split_and_scored_on_val_and_test(prepared, processor):
    from phi3v.training.metrics import split_baselines

    module = make(prepared[0], processor)
    column = {split: {name: module.datasets[split].table.column(name).to_pylist() for name in ("price", "category")}
              for split in ("train", "val", "test")}
    mean = sum(column["train"]["price"]) / len(column["train"]["price"])
    train_categories = column["train"]["category"]
    majority = max(dict.fromkeys(train_categories), key=train_categories.count)  # ties: the first seen
    scores = split_baselines(module.task, {split: module.truth(split) for split in ("train", "val", "test")})
    assert set(scores) == {"val", "test"}
    for split in ("val", "test"):
        prices, categories = column[split]["price"], column[split]["category"]
        assert scores[split]["train_mean"]["price_mae"] == pytest.approx(
            sum(abs(p - mean) for p in prices) / len(prices), rel=1e-9)
        assert scores[split]["train_mean"]["category_accuracy"] == pytest.approx(
            sum(c == majority for c in categories) / len(categories))


class _Constant(L.LightningModule):
    """Trains one weight whatever the batch: only the loop's progress matters here."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        return (self.weight**2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("steps", [3, 5])
def test_checkpoints_count_trained_batches_not_the_batches_the_loader_fetched_ahead(
        prepared, processor, tmp_path, steps):
    """A loader worker prefetches batches, so the sampler has yielded more than `steps` when `last.ckpt`
    is written at step `steps`; the state a resume starts from must say `steps` (TrainedBatches reports)."""
    from phi3v.training.callbacks import LastCheckpoint, TrainedBatches

    data_dir, _ = prepared
    module = make(data_dir, processor, num_workers=1)
    trainer = L.Trainer(max_steps=steps, callbacks=[TrainedBatches(), LastCheckpoint(tmp_path)], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(_Constant(), datamodule=module)
    assert module.train_sampler.state_dict()["batches_yielded"] > steps  # what the loader fetched
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["ProductDataModule"]["train_sampler"]
    assert (state["epoch"], state["batches_yielded"]) == (0, steps)
