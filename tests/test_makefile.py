"""Tier 1: the install logic of the Makefile, run with a fake Python that records what pip would do
(no download): a changed TORCH_SPEC or TORCH_INDEX reinstalls torch, an unchanged one does nothing;
the browser download is tried once by `make test` and again by `make browser`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.config, pytest.mark.skipif(shutil.which("make") is None, reason="needs make")]


@pytest.fixture
def venv(tmp_path) -> Path:
    """A venv whose python only logs its arguments to <venv>/log."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "venv" / "log"}\n')
    python.chmod(0o755)
    return tmp_path / "venv"


def make(venv: Path, *arguments: str) -> list[str]:
    """Run a target; the pip commands it ran (and forget them)."""
    environment = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "TORCH_SPEC", "TORCH_INDEX")}
    done = subprocess.run(["make", "-s", "-C", str(REPO), f"VENV={venv}", *arguments], env=environment,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    log = venv / "log"
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def test_a_changed_torch_spec_reinstalls_torch_and_an_unchanged_one_does_nothing(venv):
    assert make(venv, "install") == [
        "-m pip install --quiet torch==2.13.0", "-m pip install --quiet -e .[dev,qlora,app]",
        "-m pip install --quiet --no-deps sweeps==0.3.0",
    ]
    assert make(venv, "install") == []  # installed, same request
    assert make(venv, "install", "TORCH_SPEC=torch") == [
        "-m pip install --quiet --force-reinstall --no-deps torch", "-m pip install --quiet torch",
        "-m pip install --quiet -e .[dev,qlora,app]", "-m pip install --quiet --no-deps sweeps==0.3.0",
    ]
    assert (venv / ".torch-spec").read_text().strip() == "torch"


def test_the_index_is_a_variable_and_install_gpu_asks_for_the_default_build(venv):
    make(venv, "install")
    cpu = make(venv, "install", "TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert cpu[0] == ("-m pip install --quiet --force-reinstall --no-deps torch==2.13.0 "
                      "--index-url https://download.pytorch.org/whl/cpu")
    assert make(venv, "install-gpu")[:2] == [
        "-m pip install --quiet --force-reinstall --no-deps torch", "-m pip install --quiet torch",
    ]


def test_no_registry_host_is_hard_coded_as_a_default():
    text = (REPO / "Makefile").read_text()
    assert "TORCH_INDEX ?=\n" in text  # empty: the machine's pip configuration decides
    assert not [line for line in text.splitlines() if "http" in line and not line.lstrip().startswith("#")]


def test_make_test_tries_the_browser_download_once_and_make_browser_again(venv):
    install = ["-m pip install --quiet torch==2.13.0", "-m pip install --quiet -e .[dev,qlora,app]",
               "-m pip install --quiet --no-deps sweeps==0.3.0"]
    assert make(venv, "test") == [*install, "tests/browser.py --install", "-m pytest -q"]
    assert make(venv, "test") == ["-m pytest -q"]  # tried already: not on every run
    assert make(venv, "browser") == ["tests/browser.py --install"]
    assert make(venv, "test") == ["-m pytest -q"]
    assert make(venv, "test-fast") == ['-m pytest -q -m not slow']
