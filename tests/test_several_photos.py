"""Tier 2: several photos per item (issue 22), from the catalogue's image columns to the model's forward:
list-valued image columns, prepare's bad-photo rule and counts, the image-token cap, batches mixing photo
counts (collate, model, sampler lengths), distributed padding and the evaluation gather."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from phi3v.config_schema import typed
from phi3v.data.catalogue import ColumnMap, item_photos, validate_rows
from phi3v.data.collate import Phi3VCollator
from phi3v.data.datamodule import ProductDataModule
from phi3v.data.download import DownloadSettings
from phi3v.data.eval_sampler import EvalBatchSampler
from phi3v.data.manifest import catalogue_signature, prepare_catalogue
from phi3v.data.photo_tokens import CapCounts, cap_image_tokens
from phi3v.data.sampler import LengthGroupedBatchSampler
from phi3v.data.spec import DataSpec
from phi3v.data.synthetic import SyntheticSpec
from phi3v.inference import Answer
from phi3v.modeling import IGNORE_INDEX
from phi3v.modeling.model_spec import ModelSpec, load_base_model
from phi3v.task import PhotoSpec, TaskSpec
from phi3v.training.evaluation import EvalRecord
from phi3v.training.gathering import gather_records
from phi3v.training.losses import per_sample_loss

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

HEADER = "product_code,title,category3_code,full_price,imageurl,detail_imageurl"
TWO_COLUMNS = ColumnMap(image=["imageurl", "detail_imageurl"])
TASK = TaskSpec()  # the seed's fields: title, category, price


# ---- the catalogue's image columns -----------------------------------------------------------------
@pytest.mark.parametrize(("cells", "photos"), [
    ({"imageurl": "a.jpg", "detail_imageurl": "b.jpg"}, ("a.jpg", "b.jpg")),
    ({"imageurl": ["a.jpg", "c.jpg"], "detail_imageurl": "N.A."}, ("a.jpg", "c.jpg")),  # parquet / JSONL list
    ({"imageurl": np.array(["a.jpg", "c.jpg"]), "detail_imageurl": "d.jpg"}, ("a.jpg", "c.jpg", "d.jpg")),  # pandas
    ({"imageurl": '["x.jpg", " y.jpg "]', "detail_imageurl": None}, ("x.jpg", "y.jpg")),  # a JSON array in a CSV
    ({"imageurl": ["a.jpg", "", "n/a"], "detail_imageurl": "  "}, ("a.jpg",)),  # placeholders are no photo
    ({"imageurl": "", "detail_imageurl": "d.jpg"}, ("d.jpg",)),
    ({"imageurl": "[draft].jpg", "detail_imageurl": float("nan")}, ("[draft].jpg",)),  # not JSON: a path
    ({"imageurl": np.str_("a.jpg"), "detail_imageurl": np.float64("nan")}, ("a.jpg",)),  # numpy scalars
])
def test_an_items_photos_are_every_columns_cells_in_order(cells, photos):
    assert item_photos(cells, TWO_COLUMNS) == photos


def test_an_item_without_any_photo_is_dropped_as_missing_image():
    record = {"product_code": 1, "title": "Scarf", "category3_code": "SCARVES", "full_price": 10.0}
    kept, dropped = validate_rows([{**record, "imageurl": "N.A.", "detail_imageurl": None},
                                   {**record, "product_code": 2, "imageurl": "[]", "detail_imageurl": "b.jpg"}],
                                  TWO_COLUMNS, TaskSpec())
    assert [(d.reason, d.detail, d.image) for d in dropped] == [("missing_image", "image is ['N.A.', None]", "N.A. ")]
    assert [row.images for row in kept] == [("b.jpg",)]


def test_image_columns_are_checked_and_named_by_position():
    assert ColumnMap().photo_columns == ("imageurl",) and TWO_COLUMNS.image == ("imageurl", "detail_imageurl")
    with pytest.raises(ValueError, match=r"data.columns.image\[1\] = 'detail_imageurl' is not a column"):
        TWO_COLUMNS.check(["imageurl", "title", "category3_code", "full_price", "product_code"])
    for bad in ([], "", ["a", 3], {"a": 1}):
        with pytest.raises(ValueError, match="data.columns.image must be a column name or a non-empty list"):
            ColumnMap(image=bad)


def test_a_list_of_image_columns_from_yaml_is_a_tuple_and_its_signature_reads_back_equal(tmp_path):
    spec = typed(DataSpec, {"columns": {"image": ["imageurl", "detail_imageurl"]},
                            "photos": {"max_per_item": 2, "bad_photo": "keep_rest"}})
    assert spec.columns == TWO_COLUMNS and spec.photos == PhotoSpec(max_per_item=2, bad_photo="keep_rest")
    signature = catalogue_signature("x.csv", spec.columns, spec.task, spec.synthetic, "train", spec.photos)
    assert json.loads(json.dumps(signature)) == signature  # as report.json reads back: no re-prepare every time
    assert signature["columns"]["image"] == ["imageurl", "detail_imageurl"]
    assert signature["photos"] == {"max_per_item": 2, "bad_photo": "keep_rest"}
    default_rule = catalogue_signature("x.csv", spec.columns, spec.task, spec.synthetic, "train")
    assert default_rule != signature  # the rule re-prepares


# ---- prepare: every photo fetched and verified, the bad-photo rule, counts ------------------------------------
SIZES = {"a.png": (120, 80), "b.png": (60, 100), "c.png": (300, 90)}


@pytest.fixture(scope="module")
def mixed_catalogue(tmp_path_factory) -> Path:
    """Items of one and two photos, some unreadable (bad.png is text)."""
    root = tmp_path_factory.mktemp("photos")
    for i, (name, size) in enumerate(SIZES.items()):
        Image.new("RGB", size, (60 * i, 120, 200)).save(root / name)
    (root / "bad.png").write_text("not a photo")
    rows = ["1,Two Good,BAGS,100,a.png,b.png", "2,Bad Second,BAGS,200,a.png,bad.png",
            "3,Bad First,HATS,300,bad.png,c.png", "4,Both Bad,HATS,400,bad.png,bad.png", "5,One Photo,BELTS,500,c.png,"]
    (root / "catalogue.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return root


def prepared(root: Path, photos: PhotoSpec, name: str):
    report = prepare_catalogue(str(root / "catalogue.csv"), root / name, TWO_COLUMNS, TaskSpec(),
                               DownloadSettings(), SyntheticSpec(), progress=False, photos=photos)
    manifest = pq.read_table(root / name / "manifest.parquet").to_pylist()
    return report, {row["product_id"]: [Path(p).name for p in row["image_paths"]] for row in manifest}, manifest


def test_drop_item_drops_an_item_with_one_bad_photo_and_counts_it(mixed_catalogue):
    report, photos, manifest = prepared(mixed_catalogue, PhotoSpec(), "drop")
    assert photos == {"1": ["a.png", "b.png"], "5": ["c.png"]}
    assert (report.kept, report.dropped) == (2, {"not_an_image": 3})
    assert (report.photos.per_item, report.photos.skipped, report.photos.items_dropped_for_one_bad_photo) == (
        {"2": 1, "1": 1}, {}, 2)  # items 2 and 3 had a readable photo; item 4 none
    first = manifest[0]
    assert (first["image_widths"], first["image_heights"]) == ([120, 60], [80, 100])
    assert first["image_urls"] == ["a.png", "b.png"]
    dropped = pq.read_table(mixed_catalogue / "drop" / "dropped.parquet").to_pylist()
    assert [(d["product_id"], d["image"], d["reason"]) for d in dropped] == [
        ("2", "bad.png", "not_an_image"), ("3", "bad.png", "not_an_image"), ("4", "bad.png", "not_an_image")]
    summary = report.summary(PhotoSpec())
    assert ("  items by photos used: 1 photo(s): 1, 2 photo(s): 1; photos left out: none; items dropped for one "
            "bad photo: 2 (data.photos: max_per_item=4, bad_photo=drop_item)") in summary.splitlines()
    stored = json.loads((mixed_catalogue / "drop" / "report.json").read_text())["photos"]
    assert stored == {"per_item": {"2": 1, "1": 1}, "skipped": {}, "items_dropped_for_one_bad_photo": 2}


def test_keep_rest_keeps_the_readable_photos_and_counts_the_bad_ones(mixed_catalogue):
    report, photos, _ = prepared(mixed_catalogue, PhotoSpec(bad_photo="keep_rest"), "keep")
    assert photos == {"1": ["a.png", "b.png"], "2": ["a.png"], "3": ["c.png"], "5": ["c.png"]}
    assert (report.kept, report.dropped) == (4, {"not_an_image": 1})  # item 4: no readable photo
    assert (report.photos.per_item, report.photos.skipped, report.photos.items_dropped_for_one_bad_photo) == (
        {"2": 1, "1": 3}, {"not_an_image": 2}, 0)


@pytest.mark.parametrize(("rule", "expected", "skipped"), [
    ("drop_item", {"1": ["a.png"], "2": ["a.png"], "5": ["c.png"]}, {"over_max_per_item": 2}),  # bad.png not fetched
    ("keep_rest", {"1": ["a.png"], "2": ["a.png"], "3": ["c.png"], "5": ["c.png"]},
     {"over_max_per_item": 1, "not_an_image": 2}),
])
def test_max_per_item_keeps_the_first_photos(mixed_catalogue, rule, expected, skipped):
    report, photos, _ = prepared(mixed_catalogue, PhotoSpec(max_per_item=1, bad_photo=rule), rule)
    assert photos == expected and report.photos.skipped == skipped


def test_a_one_photo_catalogue_reports_as_it_always_did(mixed_catalogue):
    report = prepare_catalogue(str(mixed_catalogue / "catalogue.csv"), mixed_catalogue / "one", ColumnMap(),
                               TaskSpec(), DownloadSettings(), SyntheticSpec(), progress=False)
    assert report.summary().splitlines()[1:] == [
        "  dropped not_an_image: 2", f"  images downloaded 0, reused 0; manifest in {mixed_catalogue / 'one'}"]


# ---- the image-token cap and the question's tags, at setup -----------------------------------------------
def test_the_image_token_cap_keeps_leading_photos_that_fit_and_drops_items_whose_first_does_not():
    table = pa.table({"product_id": ["a", "b", "c"], "image_paths": [["1", "2", "3"], ["4"], ["5", "6"]],
                      "image_widths": [[10, 20, 30], [99], [10, 10]], "image_heights": [[1, 1, 1], [1], [1, 1]],
                      "image_urls": [["u1", "u2", "u3"], ["u4"], ["u5", "u6"]]})
    tokens = lambda width, height: width * height  # noqa: E731  (a photo's tokens = its width here)
    capped, counts = cap_image_tokens(table, PhotoSpec(max_image_tokens=30), tokens)
    assert capped.column("image_paths").to_pylist() == [["1", "2"], ["5", "6"]]  # 10 + 20 fit, + 30 does not
    assert capped.column("image_urls").to_pylist() == [["u1", "u2"], ["u5", "u6"]]
    assert capped.column("product_id").to_pylist() == ["a", "c"] and counts == CapCounts(1, 1)
    assert cap_image_tokens(table, PhotoSpec(max_image_tokens=60), tokens)[1] == CapCounts(1, 0)  # 99 > 60
    assert cap_image_tokens(table, PhotoSpec(max_image_tokens=99), tokens)[1] == CapCounts(0, 0)  # all fit
    assert cap_image_tokens(table, PhotoSpec(), tokens)[0] is table  # no cap: untouched


def module_for(root: Path, data_dir: str, processor, **settings) -> ProductDataModule:
    spec = dict(source=str(root / "catalogue.csv"), data_dir=str(root / data_dir), columns=TWO_COLUMNS,
                photos=PhotoSpec(bad_photo="keep_rest"), val_fraction=0.0, test_fraction=0.0, batch_size=2,
                split_seed=3)
    module = ProductDataModule(DataSpec(**{**spec, **settings}))
    module.connect(processor)
    module.prepare_data()
    module.setup("fit")
    return module


def test_setup_applies_the_cap_to_every_item_and_a_tag_per_photo_question_must_fit(mixed_catalogue, processor):
    count = processor.image_processor.num_image_tokens
    cap = count(*SIZES["a.png"]) + count(*SIZES["b.png"]) - 1  # item 1's two photos do not fit together
    module = module_for(mixed_catalogue, "keep", processor,
                        photos=PhotoSpec(bad_photo="keep_rest", max_image_tokens=cap))
    train = module.datasets["train"]
    assert sorted(len(paths) for paths in train.table.column("image_paths").to_pylist()) == [1, 1, 1, 1]
    two_tags = TaskSpec(question="Front: <|image_1|> Back: <|image_2|> What is it?")
    with pytest.raises(ValueError, match=r"data.task.question has 2 image tags but 3 items have 1 photos: write "
                                         r"the question with the single tag <\|image_1\|>"):
        module_for(mixed_catalogue, "keep", processor, task=two_tags)


# ---- batches mixing photo counts -------------------------------------------------------------------------
def test_a_batch_mixing_photo_counts_collates_and_every_rows_loss_is_its_own(mixed_catalogue, processor):
    module = module_for(mixed_catalogue, "keep", processor)
    dataset, task = module.datasets["train"], module.task
    two, one = (next(i for i in range(len(dataset)) if len(dataset[i].image_paths) == n) for n in (2, 1))
    samples = [dataset[two], dataset[one]]
    batch = Phi3VCollator(processor, task, "train")(samples)
    assert batch["pixel_values"].shape[0] == 3 and batch["meta"]["image_paths"] == [s.image_paths for s in samples]
    ids = batch["input_ids"]
    assert set(ids[0][ids[0] < 0].unique().tolist()) == {-1, -2} and set(ids[1][ids[1] < 0].unique().tolist()) == {-1}
    model = load_base_model(ModelSpec())
    with torch.no_grad():
        output = model(**{key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes")})
        sums, tokens = per_sample_loss(output.logits, batch["labels"])
        for row, sample in enumerate(samples):
            alone = processor([task.prompt(len(sample.images))], [list(sample.images)],
                              answers=[task.answer_for(sample.truth)])
            torch.testing.assert_close(sums[row] / tokens[row], model(**alone).loss, rtol=1e-5, atol=1e-5)


def test_most_photos_is_the_largest_photo_count_of_any_split(mixed_catalogue, processor):
    """What the end of a run names in predict's example (image=[<photo1>,<photo2>]): the kept items have 1 or 2
    photos; with max_per_item=1 every item has one."""
    assert module_for(mixed_catalogue, "keep", processor).most_photos() == 2
    one = module_for(mixed_catalogue, "keep-one", processor, photos=PhotoSpec(max_per_item=1, bad_photo="keep_rest"),
                     val_fraction=0.25)
    assert one.most_photos() == 1 and len(one.datasets["val"]) > 0


def test_sampler_lengths_equal_collated_lengths_for_one_and_two_photos(mixed_catalogue, processor):
    module = module_for(mixed_catalogue, "keep", processor)
    lengths = module.lengths["train"]
    assert sorted(len(p) for p in module.datasets["train"].table.column("image_paths").to_pylist()) == [1, 1, 1, 2]
    seen = []
    for batch in module.train_dataloader():
        for row, index in enumerate(batch["meta"]["index"]):
            seen.append(index)
            assert int(batch["attention_mask"][row].sum()) == lengths[index]
    assert set(seen) == {0, 1, 2, 3}
    for batch in module._eval_loader("train", "eval"):  # the loss half of an eval batch: the same rows
        for row, index in enumerate(batch["meta"]["index"]):
            assert int(batch["loss"]["attention_mask"][row].sum()) == lengths[index]


def test_distributed_padding_repeats_items_of_any_photo_count_unsupervised(mixed_catalogue, processor):
    """3 ranks over 4 items of 1 or 2 photos: the padding repeats keep their item's photos (every rank runs
    the same graph) but no labels and no record; every item is supervised exactly once."""
    module = module_for(mixed_catalogue, "keep", processor)
    dataset, collate = module.datasets["train"], Phi3VCollator(processor, module.task, "eval")
    photos = [len(p) for p in dataset.table.column("image_paths").to_pylist()]
    for sampler in ([EvalBatchSampler(module.lengths["train"], 1, num_replicas=3, rank=r) for r in range(3)],
                    [LengthGroupedBatchSampler(module.lengths["train"], 1, num_replicas=3, rank=r) for r in range(3)]):
        supervised, repeats = [], 0
        for rank_sampler in sampler:
            for indices in rank_sampler:
                batch = collate([dataset[i] for i in indices])
                meta = batch["meta"]
                assert batch["pixel_values"].shape[0] == sum(photos[i] for i in indices)
                for row, index in enumerate(meta["index"]):
                    if meta["supervised"][row]:
                        supervised.append(index)
                    else:
                        repeats += 1
                        assert (batch["loss"]["labels"][row] == IGNORE_INDEX).all()
        assert sorted(supervised) == [0, 1, 2, 3] and repeats == 2  # 4 items padded to 6 slots


# ---- the evaluation gather across processes ---------------------------------------------------------------
def record(index: int, photos: int) -> EvalRecord:
    answer = Answer(f"p{index}", tuple(f"{index}-{k}.jpg" for k in range(photos)), "t", "a",
                    dict.fromkeys(TASK.names), {"title": "t", "category": "c", "price": 1.0})
    return EvalRecord(index, answer, 0.5, 1)


def _gather_on_rank(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mine = [record(0, 2), record(3, 1)] if rank == 0 else [record(2, 3)]  # ranks of different photo counts
        results.put((rank, gather_records(mine, world_size=2)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.e2e  # two spawned processes in a gloo group: ~15 s of imports on a loaded 2-core machine
def test_the_gather_brings_every_ranks_records_with_all_their_photos():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_gather_on_rank, args=(rank, port, results)) for rank in range(2)]
    for process in processes:
        process.start()
    gathered = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(60)
    expected = [record(0, 2), record(2, 3), record(3, 1)]
    assert gathered == {0: expected, 1: expected}
    assert [r.answer.row(TASK)["image_path"] for r in expected] == [
        "0-0.jpg;0-1.jpg", "2-0.jpg;2-1.jpg;2-2.jpg", "3-0.jpg"]


# ---- the synthetic catalogue's second view ----------------------------------------------------------------
def test_the_synthetic_second_view_is_each_items_second_photo(tmp_path, processor):
    module = ProductDataModule(DataSpec(data_dir=str(tmp_path / "data"), columns=TWO_COLUMNS,
                                        synthetic=SyntheticSpec(num_products=12, views=2), val_fraction=0.0,
                                        test_fraction=0.0))
    module.connect(processor)
    module.prepare_data()
    sample = module.split_products("train")[0]
    assert len(sample.images) == 2 and Path(sample.image_paths[1]).name == f"{sample.product_id}_detail.jpg"
    assert all(len(p) == 2 for p in module.datasets["train"].table.column("image_paths").to_pylist())
    prompt = Phi3VCollator(processor, module.task).prompt(2)
    assert prompt == "<|user|>\n<|image_1|><|image_2|>What is shown in this image?<|end|>\n<|assistant|>\n"


# ---- one photo: the seed's strings, byte for byte ---------------------------------------------------------
SEED_PROMPT = "<|user|>\n<|image_1|>What is shown in this image?<|end|>\n<|assistant|>\n"


@pytest.mark.parametrize("group", ["sample", "burberry"])
def test_a_one_photo_items_prompt_and_answer_are_the_seeds_byte_for_byte(group, hydra_context, processor):
    from hydra import compose

    spec = typed(DataSpec, compose("train", overrides=[f"data={group}"]).data)
    assert spec.columns.photo_columns == ("imageurl",) and spec.photos == PhotoSpec()
    collator = Phi3VCollator(processor, spec.task, "generate")
    assert collator.prompt(1) == spec.task.prompt() == SEED_PROMPT
    assert spec.task.answer_for({"title": "Check Scarf", "category": "SCARVES", "price": 1250.0}) == (
        "Product: Check Scarf, Category: SCARVES, Full Price: 1250.0")
    assert collator.prompt(3) == SEED_PROMPT.replace("<|image_1|>", "<|image_1|><|image_2|><|image_3|>")


def test_an_item_whose_photo_turns_unreadable_keeps_its_photo_count_unsupervised(mixed_catalogue, processor):
    """A photo broken after prepare: its item still fills as many image slots (white placeholders, the same
    graph on every rank) but gets no labels, and counts once as skipped."""
    module = module_for(mixed_catalogue, "keep", processor)
    dataset = module.datasets["train"]
    two = next(i for i in range(len(dataset)) if len(dataset[i].image_paths) == 2)
    victim = dataset.image_files(two)[1]
    original = victim.read_bytes()
    try:
        victim.write_text("no longer a photo")
        sample = dataset[two]
        batch = Phi3VCollator(processor, module.task, "train")([sample, dataset[(two + 1) % len(dataset)]])
    finally:
        victim.write_bytes(original)
    assert sample.images is None and sample.error == "not_an_image" and len(sample.image_paths) == 2
    assert batch["meta"]["supervised"] == [False, True] and batch["meta"]["skipped_images"] == 1
    ids = batch["input_ids"][0]
    assert set(ids[ids < 0].unique().tolist()) == {-1, -2} and (batch["labels"][0] == IGNORE_INDEX).all()
