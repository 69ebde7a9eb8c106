"""The run's test products for the demo's gallery: photos, each field's true and predicted value, and the
answer training stored.

Read from the run dir that training wrote: `predictions/test*.csv` (one row per test product, see
training/callbacks.EvaluationReport; a product's photos in its `image_path`, phi3v.inference.photo_paths).
The predicted values are the row's answer read with the export's task (`TaskSpec.parse`, as training read
it); the true ones are the row's `true_<field>` column (a CSV of an older run has only the price's: there
the others are read back from the target answer); a number's signed error and a category's or text's match
are computed as training's CSV columns are (`<field>_error_pct`, `<field>_match`).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from phi3v.data.images import load_product_image
from phi3v.inference import photo_paths
from phi3v.task import FieldSpec, FieldValue, TaskSpec, price_error_pct
from phi3v.task.scoring import text_matches

log = logging.getLogger(__name__)
THUMBNAIL = 192  # pixels, the longer side: sharp on the page's 160-px cards, ~10 KB each as JPEG


@dataclass(frozen=True)
class GalleryField:
    """One field of a gallery product. `error_pct`: a number's signed error, 100 * (predicted - true) / true
    (phi3v.task.price_error_pct; None when unread); `match`: whether a category or text was read right."""

    name: str
    label: str
    type: str
    true: FieldValue
    predicted: FieldValue
    error_pct: float | None = None
    match: bool | None = None


@dataclass(frozen=True)
class GalleryItem:
    image_paths: tuple[Path, ...]  # the product's photos, in the order the model saw them
    prediction: str  # the answer generated at the end of training
    fields: tuple[GalleryField, ...]

    def as_json(self, index: int) -> dict:
        """The product for the page: `photo` and `thumbnail` of its first photo, `photos` and `thumbnails` of all."""
        photos = range(len(self.image_paths))
        return {"index": index, "photo": f"/gallery/{index}/photo", "thumbnail": f"/gallery/{index}/thumbnail",
                "photos": [f"/gallery/{index}/photo/{k}" for k in photos],
                "thumbnails": [f"/gallery/{index}/thumbnail/{k}" for k in photos],
                "prediction": self.prediction, "fields": [asdict(field) for field in self.fields]}


def predictions_file(run_dir: str | os.PathLike) -> Path | None:
    """The newest predictions/test*.csv of a run, or None."""
    files = sorted(Path(run_dir, "predictions").glob("test*.csv"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def load_gallery(run_dir: str | os.PathLike, task: TaskSpec, limit: int = 60) -> list[GalleryItem]:
    """Up to `limit` test products of the run (rows with a photo that no longer exists are skipped, counted)."""
    path = predictions_file(run_dir)
    if path is None:
        log.info("no predictions/test*.csv in %s: the gallery is empty", run_dir)
        return []
    items, missing = [], 0
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if len(items) == limit:
                break
            if not all(Path(photo).is_file() for photo in photo_paths(row)):
                missing += 1
                continue
            items.append(gallery_item(row, task))
    if missing:
        log.warning("gallery: %d products listed in %s have a photo that no longer exists (skipped)", missing, path)
    log.info("gallery: %d test products from %s", len(items), path)
    return items


def gallery_item(row: dict, task: TaskSpec) -> GalleryItem:
    """A gallery product from one prediction row of `task`."""
    target, predicted = task.parse(row["target"]), task.parse(row["prediction"])
    fields = []
    for spec in task.fields:
        true = _typed(spec, row.get(f"true_{spec.name}"), target[spec.name])
        value = predicted[spec.name]
        if spec.numeric:
            error = price_error_pct(None if value is None else float(value), float(true))
            fields.append(GalleryField(spec.name, spec.label, spec.type, true, value, error_pct=error))
        else:
            fields.append(GalleryField(spec.name, spec.label, spec.type, true, value, match=text_matches(value, true)))
    return GalleryItem(tuple(map(Path, photo_paths(row))), row["prediction"], tuple(fields))


def _typed(spec: FieldSpec, cell: str | None, fallback: FieldValue) -> FieldValue:
    """A `true_<field>` cell as the field's value; `fallback` (read from the target) when the CSV has none."""
    if cell is None or cell == "":
        return fallback
    if spec.type == "integer":
        return int(float(cell))
    return float(cell) if spec.numeric else cell


def thumbnail_jpeg(path: Path, size: int = THUMBNAIL) -> bytes:
    """A small JPEG of a product photo (raises ImageRejected when unreadable)."""
    image = load_product_image(path)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()
