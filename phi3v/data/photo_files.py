"""An item's photos on disk: download URLs, verify local files, and choose the photos each item keeps.

Every photo an item may use is fetched and fully decoded (phi3v.data.download, phi3v.data.images):
with `bad_photo: drop_item` its first `max_per_item` photos (an unreadable one drops the item, so later
ones could never be used), with `keep_rest` all of them (a later photo takes an unreadable one's place).
`PhotoSpec.usable` then picks the photos the manifest keeps. What happened to every photo is counted
(`PhotoCounts`, in the prepare report): the photos each kept item uses, the photos left out of kept
items (by reason, or `over_max_per_item`), and the items dropped for one bad photo while others were
readable. A dropped item's reason is that of its first unreadable photo, as for a one-photo item.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from phi3v.task import PhotoSpec

from .catalogue import DroppedRow, ProductRow
from .download import DownloadItem, DownloadSettings, download_images
from .images import ImageRejected, inspect_image_bytes

OVER_MAX = "over_max_per_item"  # a photo past data.photos.max_per_item (skipped reason)


@dataclass(frozen=True)
class Photo:
    """One photo of an item as checked: where it is stored and its upright size, or why it is unusable."""

    value: str  # the URL or path as written in the table
    path: Path | None = None
    width: int = 0
    height: int = 0
    reason: str | None = None  # None = readable
    detail: str = ""


@dataclass
class PhotoCounts:
    """What happened to the photos of the catalogue (PrepareReport.photos).

    per_item: kept items by the number of photos they use ({"1": 10, "2": 2990}).
    skipped: photos left out of kept items, by reason (`over_max_per_item`, or why it is unreadable).
    items_dropped_for_one_bad_photo: items dropped (bad_photo: drop_item) although a photo was readable.
    """

    per_item: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    items_dropped_for_one_bad_photo: int = 0

    @property
    def several(self) -> bool:
        """Whether any item had more than one photo to choose from (a one-photo catalogue: False)."""
        return bool(set(self.per_item) - {"1"} or self.skipped or self.items_dropped_for_one_bad_photo)

    def summary(self, photos: PhotoSpec) -> str:
        used = ", ".join(f"{count} photo(s): {items}" for count, items in sorted(self.per_item.items()))
        left = ", ".join(f"{reason} {count}" for reason, count in sorted(self.skipped.items())) or "none"
        return (f"  items by photos used: {used}; photos left out: {left}; items dropped for one bad photo: "
                f"{self.items_dropped_for_one_bad_photo} (data.photos: max_per_item={photos.max_per_item}, "
                f"bad_photo={photos.bad_photo})")


def attach_photos(
    rows: list[ProductRow], root: Path | None, image_dir: Path, settings: DownloadSettings, photos: PhotoSpec,
    progress: bool = True,
) -> tuple[list[tuple[ProductRow, list[Photo]]], list[DroppedRow], PhotoCounts, tuple[int, int]]:
    """(kept rows with the photos they use, dropped rows, photo counts, (downloaded, reused))."""
    wanted = {row.source_row: _candidates(row, photos) for row in rows}
    remote = [(row, k, value) for row in rows for k, value in enumerate(wanted[row.source_row])
              if value.lower().startswith(("http://", "https://"))]
    results = download_images([DownloadItem(row.product_id, value) for row, _, value in remote], image_dir,
                              settings, progress)
    checked = {(row.source_row, k): Photo(value, r.path, r.width, r.height, r.reason, r.detail)
               for (row, k, value), r in zip(remote, results)}
    kept, dropped, counts = [], [], PhotoCounts()
    for row in rows:
        candidates = [checked.get((row.source_row, k)) or _local_photo(value, root, settings.max_pixels)
                      for k, value in enumerate(wanted[row.source_row])]
        use = photos.usable([photo.reason is None for photo in candidates])
        if use is None:
            bad = next(photo for photo in candidates if photo.reason is not None)
            dropped.append(DroppedRow(row.source_row, row.product_id, bad.value, bad.reason, bad.detail))
            if any(photo.reason is None for photo in candidates):
                counts.items_dropped_for_one_bad_photo += 1
            continue
        left_out = Counter(candidates[k].reason or OVER_MAX for k in range(len(candidates)) if k not in use)
        left_out[OVER_MAX] += len(row.images) - len(candidates)  # never fetched (drop_item)
        for reason, count in (+left_out).items():
            counts.skipped[reason] = counts.skipped.get(reason, 0) + count
        counts.per_item[str(len(use))] = counts.per_item.get(str(len(use)), 0) + 1
        kept.append((row, [candidates[k] for k in use]))
    downloaded = sum(1 for r in results if r.reason is None and r.downloaded)
    reused = sum(1 for r in results if r.reason is None and not r.downloaded)
    return kept, dropped, counts, (downloaded, reused)


def _candidates(row: ProductRow, photos: PhotoSpec) -> tuple[str, ...]:
    """The photos of `row` that may be used: the first max_per_item (drop_item), or all (keep_rest)."""
    return row.images[: photos.max_per_item] if photos.bad_photo == "drop_item" else row.images


def _local_photo(value: str, root: Path | None, max_pixels: int) -> Photo:
    """A photo given as a path in the table, verified."""
    if "://" in value or value.lower().startswith(("data:", "javascript:")):
        return Photo(value, reason="bad_url", detail=f"only http(s) URLs or local paths are accepted, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        if root is None:
            return Photo(value, reason="bad_url", detail=f"relative image path {value!r} in a hub dataset")
        path = root / path
    try:
        _, width, height = inspect_image_bytes(path.read_bytes(), max_pixels=max_pixels)
    except OSError as error:
        return Photo(value, reason="unreadable", detail=f"{path}: {error}")
    except ImageRejected as problem:
        return Photo(value, reason=problem.reason, detail=f"{path}: {problem.detail}")
    return Photo(value, path, width, height)
