"""`python -m phi3v.app adapter=outputs/<run>/adapter`: try a fine-tune in the browser.

Drop or pick a product photo and see the answer parsed into title / category / price, the generated
text and the latency; a gallery shows the run's test products with their true and predicted values
(click one to ask the model again). Also `export=<dir>` (phi3v.export output) and `preset=tiny`
(untrained random weights, to try the page right after `make train` or install). conf/app.yaml lists
the keys.

Why not Gradio, the convention of the field: the page must work on machines with no network, and
Gradio (checked at 6.31) calls api.gradio.app at start-up unless analytics are switched off by an
environment variable, its default theme loads fonts from fonts.googleapis.com and its 30 MB frontend
bundle references that CDN, so being offline would rest on settings nobody tests; it would also add
~28 direct dependencies (FastAPI, uvicorn, pandas, orjson, pydub, ...) to the package. The demo needs one
page and four routes: Python's own http.server serves them (phi3v/demo/server.py) and
tests/test_app_browser.py checks in a real browser that the page never asks for anything elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from phi3v.cli import UsageError, check_dtype, check_export_dir, quiet_console, run_command, start
from phi3v.modeling.presets import PRESETS

log = logging.getLogger("phi3v.app")


def check_config(cfg: DictConfig) -> None:
    """Fail on bad keys before the model is loaded."""
    chosen = [key for key in ("adapter", "export", "preset") if cfg[key] is not None]
    if len(chosen) != 1:
        raise UsageError(
            "choose exactly one model: adapter=<run>/adapter, export=<dir> (phi3v.export) or preset=tiny"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    for key in ("adapter", "export"):
        if cfg[key] is not None:
            check_export_dir(key, cfg[key])
    if cfg.preset is not None and cfg.preset not in PRESETS:
        raise UsageError(f"preset={cfg.preset}: choose one of {', '.join(sorted(PRESETS))}")
    if cfg.run is not None and not Path(cfg.run).is_dir():
        raise UsageError(f"run={cfg.run}: no such directory (a train.py run dir, for the gallery)")
    check_dtype(cfg.dtype)
    for key in ("max_new_tokens", "max_upload_mb", "max_pixels"):
        if cfg[key] <= 0:
            raise UsageError(f"{key}={cfg[key]} must be > 0")


def gallery_dir(cfg: DictConfig) -> Path | None:
    """`run`, else the adapter's parent when it is a run dir (holds predictions/)."""
    if cfg.run is not None:
        return Path(cfg.run)
    parent = Path(cfg.adapter or cfg.export or ".").resolve().parent
    return parent if cfg.preset is None and (parent / "predictions").is_dir() else None


def run(cfg: DictConfig) -> None:
    from phi3v.demo.gallery import load_gallery, split_counts
    from phi3v.demo.predictor import load_predictor
    from phi3v.demo.server import DemoState, make_server

    quiet_console()
    predictor = load_predictor(
        export=cfg.adapter or cfg.export, preset=cfg.preset, dtype=cfg.dtype, device=cfg.device,
        max_new_tokens=cfg.max_new_tokens, max_pixels=cfg.max_pixels,
    )
    runs = gallery_dir(cfg)
    gallery = load_gallery(runs, predictor.template, cfg.gallery_size) if runs else []
    state = DemoState(predictor, gallery, split_counts(runs) if runs else {}, int(cfg.max_upload_mb * 1e6))
    server = make_server(state, cfg.host, cfg.port)
    host, port = server.server_address[:2]
    print(f"phi3v demo of {predictor.source} on http://{host}:{port}  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@hydra.main(config_path="../conf", config_name="app", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("phi3v").setLevel(logging.INFO)
    run_command(check_config, run, cfg)


if __name__ == "__main__":
    start(main)
