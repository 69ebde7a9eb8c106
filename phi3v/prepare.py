"""`python -m phi3v.prepare data=<sample|burberry|table> [overrides]`: build a catalogue's manifest.

Downloads (or generates) the images, validates every row and prints kept/dropped counts by reason.
Running it again reuses every image already valid on disk.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from phi3v.config_schema import register_schemas

# Typed schemas for conf/ (typos and wrong types fail naming the key); must precede composition.
register_schemas()


@hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from phi3v.data.prepare import prepare_catalogue  # after composition: a typo is answered at once

    datamodule = instantiate(cfg.data)
    report = prepare_catalogue(
        datamodule.source,
        datamodule.data_dir,
        datamodule.columns,
        datamodule.download,
        datamodule.synthetic,
        datamodule.split,
        progress=cfg.progress,
    )
    print(report.summary())
    if report.kept == 0:
        logging.getLogger(__name__).error("no usable rows: check data.columns and the drop reasons above")
        sys.exit(1)


if __name__ == "__main__":
    main()
