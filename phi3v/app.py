"""`python -m phi3v.app adapter=outputs/<run>/adapter`: try a fine-tune in the browser.

Drop or pick a product photo (or several photos of one product) and see the answer parsed into the fields
the model was trained to state (title / category / price by default), the generated text and the latency;
a gallery shows the run's test products (all their photos) with their true and predicted values (click one
to ask the model again). Also `export=<dir>` (phi3v.export output) and `preset=tiny` (untrained random
weights, to try the page right after `make train` or install). conf/app.yaml lists the keys; the server
needs the `app` extra (`pip install -e .[app]`; `make install` has it).

The page is one self-contained HTML file (phi3v/demo/page.html); Starlette routes its API and uvicorn
serves it (phi3v/demo/serving.py says what each owns, and what we add: deadlines, the pixel budget,
admission, the exit status). Why not Gradio, the convention of the field: the page must work on
machines with no network, and Gradio (checked at 6.31) calls api.gradio.app at start-up unless
analytics are switched off by an environment variable, its default theme loads fonts from
fonts.googleapis.com and its 30 MB frontend bundle references that CDN, so being offline would rest on
settings nobody tests; it would also add ~28 direct dependencies. tests/test_app_browser.py checks in a
real browser that the page never asks for anything elsewhere.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from phi3v.cli import UsageError, check_dtype, check_export_dir, quiet_console, run_command, start
from phi3v.modeling.presets import PRESETS

log = logging.getLogger("phi3v.app")
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]{8,}")  # URL-safe: it goes into the printed link as it is
POSITIVE = ("max_new_tokens", "max_upload_mb", "max_photos", "max_pixels", "body_timeout_s", "header_timeout_s",
            "max_connections", "max_queue", "decode_pixels", "drain_timeout_s")


def check_config(cfg: DictConfig) -> None:
    """Fail on bad keys before the model is loaded."""
    if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("starlette") is None:
        raise UsageError("the web demo needs the app extra: pip install -e '.[app]' (make install has it)")
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
    for key in POSITIVE:
        if cfg[key] <= 0:
            raise UsageError(f"{key}={cfg[key]} must be > 0")
    if cfg.decode_pixels < cfg.max_pixels:
        raise UsageError(f"decode_pixels={cfg.decode_pixels} must be >= max_pixels={cfg.max_pixels}: the largest "
                         "photo accepted must fit the decoding budget")
    token = access_token(cfg)
    if token is not None and not TOKEN_PATTERN.fullmatch(token):
        raise UsageError("token (or PHI3V_APP_TOKEN) must be 8 or more of A-Z a-z 0-9 . _ ~ - (it goes into a URL); "
                         "e.g. python -c 'import secrets; print(secrets.token_urlsafe())'")


def access_token(cfg: DictConfig) -> str | None:
    """`token=`, else the PHI3V_APP_TOKEN environment variable, else None (no token asked)."""
    from phi3v.demo.access import TOKEN_ENV

    return cfg.token if cfg.token is not None else os.environ.get(TOKEN_ENV) or None


def gallery_dir(cfg: DictConfig) -> Path | None:
    """`run`, else the adapter's parent when it is a run dir (holds predictions/)."""
    if cfg.run is not None:
        return Path(cfg.run)
    parent = Path(cfg.adapter or cfg.export or ".").resolve().parent
    return parent if cfg.preset is None and (parent / "predictions").is_dir() else None


def model_name(cfg: DictConfig, source: str, loopback: bool) -> str:
    """What /api/info calls the model: the source as given on loopback, else no absolute path (the
    directory and its parent, e.g. `run-7/adapter`)."""
    directory = cfg.adapter or cfg.export
    if loopback or directory is None:
        return source
    path = Path(directory).resolve()
    return f"{path.parent.name}/{path.name}"


def run(cfg: DictConfig) -> None:
    from phi3v.data.splits import split_counts
    from phi3v.demo.access import is_loopback, start_lines
    from phi3v.demo.gallery import load_gallery
    from phi3v.demo.limits import ServerLimits
    from phi3v.demo.predictor import load_predictor
    from phi3v.demo.server import DemoState, build_app
    from phi3v.demo.serving import bind, make_server, serve

    try:  # before the model loads: a busy port is answered at once
        sock = bind(cfg.host, cfg.port)
    except OSError as problem:
        raise UsageError(f"host={cfg.host} port={cfg.port}: cannot listen there ({problem.strerror or problem}); "
                         "choose another port= (0 = any free one)") from problem
    with sock:
        quiet_console()
        predictor = load_predictor(
            export=cfg.adapter or cfg.export, preset=cfg.preset, dtype=cfg.dtype, device=cfg.device,
            max_new_tokens=cfg.max_new_tokens, max_pixels=cfg.max_pixels,
        )
        runs = gallery_dir(cfg)
        gallery = load_gallery(runs, predictor.task, cfg.gallery_size) if runs else []
        limits = ServerLimits(**{key: cfg[key] for key in ServerLimits.keys()})
        name = model_name(cfg, predictor.source, is_loopback(cfg.host))
        state = DemoState(predictor, gallery, split_counts(runs) if runs else {}, limits, name)
        token = access_token(cfg)
        server = make_server(build_app(state, token), limits, on_drain=state.workload.drain)
        host, port = sock.getsockname()[:2]
        print("\n".join(start_lines(predictor.source, host, port, token)), flush=True)
        serve(server, sock)
    if state.workload.generating:
        exit_during_generation(cfg.drain_timeout_s)


def exit_during_generation(drain_timeout_s: float) -> None:
    """A generation outlived the drain: exit 0 now, without waiting for it. (Its daemon thread must
    not be running torch code while the interpreter finalises: that aborts the process.)"""
    log.warning("a generation was still running %g s after the stop (drain_timeout_s): exiting without it",
                drain_timeout_s)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@hydra.main(config_path="../conf", config_name="app", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("phi3v").setLevel(logging.INFO)
    run_command(check_config, run, cfg)


if __name__ == "__main__":
    start(main)
