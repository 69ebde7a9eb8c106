"""The run's test products for the demo's gallery: photos, true fields and the answer training stored.

Read from the run dir that training wrote: `predictions/test*.csv` (one row per test product, see
training/callbacks.EvaluationReport; a product's photos in its `image_path`, phi3v.inference.photo_paths).
The true title and category are parsed back from the row's target answer with the export's template.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from phi3v.data.images import load_product_image
from phi3v.inference import photo_paths
from phi3v.task import PromptTemplate

log = logging.getLogger(__name__)
THUMBNAIL = 192  # pixels, the longer side: sharp on the page's 160-px cards, ~10 KB each as JPEG


@dataclass(frozen=True)
class GalleryItem:
    image_paths: tuple[Path, ...]  # the product's photos, in the order the model saw them
    true_title: str | None
    true_category: str | None
    true_price: float
    prediction: str  # the answer generated at the end of training
    predicted_title: str | None
    predicted_category: str | None
    predicted_price: float | None
    price_error_pct: float | None  # signed, 100 * (predicted - true) / true (phi3v.task.price_error_pct)

    def as_json(self, index: int) -> dict:
        """The product for the page: `photo` and `thumbnail` of its first photo, `photos` and `thumbnails` of all."""
        fields = {k: v for k, v in self.__dict__.items() if k != "image_paths"}
        photos = range(len(self.image_paths))
        return {"index": index, "photo": f"/gallery/{index}/photo", "thumbnail": f"/gallery/{index}/thumbnail",
                "photos": [f"/gallery/{index}/photo/{k}" for k in photos],
                "thumbnails": [f"/gallery/{index}/thumbnail/{k}" for k in photos], **fields}


def predictions_file(run_dir: str | os.PathLike) -> Path | None:
    """The newest predictions/test*.csv of a run, or None."""
    files = sorted(Path(run_dir, "predictions").glob("test*.csv"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def load_gallery(run_dir: str | os.PathLike, template: PromptTemplate, limit: int = 60) -> list[GalleryItem]:
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
            items.append(gallery_item(row, template))
    if missing:
        log.warning("gallery: %d products listed in %s have a photo that no longer exists (skipped)", missing, path)
    log.info("gallery: %d test products from %s", len(items), path)
    return items


def gallery_item(row: dict, template: PromptTemplate) -> GalleryItem:
    truth, predicted = template.parse(row["target"]), template.parse(row["prediction"])
    return GalleryItem(
        image_paths=tuple(map(Path, photo_paths(row))), true_title=truth.title, true_category=truth.category,
        true_price=float(row["true_price"]), prediction=row["prediction"], predicted_title=predicted.title,
        predicted_category=predicted.category, predicted_price=predicted.price,
        price_error_pct=float(row["price_error_pct"]) if row.get("price_error_pct") else None,
    )


def thumbnail_jpeg(path: Path, size: int = THUMBNAIL) -> bytes:
    """A small JPEG of a product photo (raises ImageRejected when unreadable)."""
    image = load_product_image(path)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()
