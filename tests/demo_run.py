"""A small run directory as train.py leaves it, for the web demo's tests (no training: seconds).

  <root>/run/adapter/               the tiny preset with a LoRA adapter whose B matrices are seeded noise
  <root>/run/predictions/test.csv   one row per product, as EvaluationReport writes it (phi3v.inference rows)
  <root>/run/splits.json            split counts
  <root>/images/<id>.png            the product photos (plain shapes on distinct colours)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from phi3v.data.splits import write_splits
from phi3v.inference import prediction_row, write_predictions
from phi3v.modeling.model_spec import ModelSpec, load_base_model, load_processor
from phi3v.shipping.adapter import export_adapter
from phi3v.task import TaskSpec
from phi3v.training.lora import LoraSpec, apply_lora

TASK = TaskSpec()
# (product id, colour, title, category, true price, predicted answer as training stored it)
PRODUCTS = [
    ("80000001", "firebrick", "Check Wool Scarf", "SCARVES", 450.0,
     "Product: Check Wool Scarf, Category: SCARVES, Full Price: 420.0"),
    ("80000002", "navy", "Leather Belt", "BELTS", 330.0, "Product: Leather Belt, Category: BAGS, Full Price: 990.0"),
    ("80000003", "darkgreen", "Bucket Hat", "HATS", 290.0, "no answer the template can read"),
]


def product_photo(color: str, size: tuple[int, int] = (240, 180)) -> Image.Image:
    image = Image.new("RGB", size, color)
    image.paste(Image.new("RGB", (size[0] // 3, size[1] // 3), "white"), (12, 12))
    return image


def build_demo_run(root: Path, seed: int = 1) -> Path:
    """Write the run dir under `root` and return it."""
    run, images = root / "run", root / "images"
    images.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec()
    torch.manual_seed(seed)  # LoRA A matrices are drawn from the global generator
    model = apply_lora(load_base_model(spec), LoraSpec(r=8, train_projector=True))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a LoRA at init changes nothing: perturb it so the adapter matters
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    export_adapter(model.eval(), load_processor(spec), spec, TASK, run / "adapter")
    rows = []
    for pid, color, title, category, price, answer in PRODUCTS:
        path = images / f"{pid}.png"
        product_photo(color).save(path)
        truth = {"title": title, "category": category, "price": price}
        rows.append(prediction_row(TASK, pid, path, TASK.answer_for(truth), answer, TASK.parse(answer), truth))
    write_predictions(rows, run / "predictions" / "test.csv", TASK)
    ids = ["70000001", "70000002", *(p[0] for p in PRODUCTS)]
    write_splits(run, ids, np.array(["train", "train", "test", "test", "test"]))
    return run
