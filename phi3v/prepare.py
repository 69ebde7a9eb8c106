"""`python -m phi3v.prepare data=<sample|burberry|table> [overrides]`: build a catalogue's manifest.

Downloads (or generates) the images, validates every row and prints kept/dropped counts by reason.
Running it again reuses every image already valid on disk. Only the catalogue keys of the data group
matter here (source, data_dir, columns, photos, split, download, synthetic, and the fields' columns and
types in task); the loader settings do not.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from phi3v.cli import start

if TYPE_CHECKING:
    from phi3v.data.manifest import PrepareReport
    from phi3v.data.spec import DataSpec


def prepare(data: DataSpec, progress: bool = True) -> PrepareReport:
    """Prepare the catalogue a data spec names (its source, columns, downloads or synthetic settings)."""
    from phi3v.data.manifest import default_data_dir, prepare_catalogue  # after composition: a typo is answered at once

    return prepare_catalogue(data.source, data.data_dir or default_data_dir(data.source), data.columns, data.task,
                             data.download, data.synthetic, data.split, progress=progress, photos=data.photos)


@hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    data = OmegaConf.to_object(cfg.data)
    report = prepare(data, cfg.progress)
    print(report.summary(data.photos))
    if report.kept == 0:
        logging.getLogger(__name__).error("no usable rows: check data.columns, the columns of data.task.fields and "
                                          "the drop reasons above")
        sys.exit(1)


if __name__ == "__main__":
    start(main)
