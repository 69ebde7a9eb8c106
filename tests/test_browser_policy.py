"""Tier 2: which chromium the browser test drives (tests/browser.py), and what happens without one:
skipped with a reason naming how to get one, or failed where PHI3V_REQUIRE_BROWSER is set (CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from browser import HOW_TO_GET_ONE, find_chromium, missing_reason, required

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def no_download() -> None:
    return None


def test_phi3v_chromium_wins_and_is_not_replaced_when_it_is_wrong(tmp_path):
    mine = executable(tmp_path / "mine" / "chrome")
    on_path = executable(tmp_path / "bin" / "chromium")
    environ = {"PATH": str(on_path.parent), "PHI3V_CHROMIUM": str(mine)}
    assert find_chromium(environ, no_download).binary == mine
    for wrong in (tmp_path / "nowhere", tmp_path / "mine"):  # missing; a directory
        found = find_chromium({**environ, "PHI3V_CHROMIUM": str(wrong)}, no_download)
        assert found.binary is None and found.how == f"PHI3V_CHROMIUM={wrong} is not an executable file"
    (tmp_path / "plain").write_text("not executable")
    assert find_chromium({**environ, "PHI3V_CHROMIUM": str(tmp_path / "plain")}, no_download).binary is None


def test_path_is_searched_in_order_then_playwrights_download(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    chrome = executable(second / "google-chrome")
    assert find_chromium({"PATH": f"{first}:{second}"}, no_download).binary == chrome
    chromium = executable(first / "chromium-browser")
    found = find_chromium({"PATH": f"{second}:{first}"}, no_download)
    assert found.binary == chromium and found.how == "chromium-browser on PATH"  # chromium* before google-chrome
    downloaded = executable(tmp_path / "ms-playwright" / "chrome")
    found = find_chromium({"PATH": str(tmp_path / "empty")}, lambda: downloaded)
    assert found.binary == downloaded and found.how == "Playwright's download"
    found = find_chromium({"PATH": str(tmp_path / "empty")}, lambda: tmp_path / "ms-playwright" / "not-yet")
    assert found.binary is None


def test_without_a_browser_the_reason_names_every_way_to_get_one(tmp_path):
    found = find_chromium({"PATH": str(tmp_path)}, no_download)
    reason = missing_reason(found)
    assert reason == (f"no chromium for the browser test (PHI3V_CHROMIUM is unset, no chromium, chromium-browser, "
                      f"google-chrome, google-chrome-stable on PATH, and no Playwright download): {HOW_TO_GET_ONE}")
    for way in ("make browser", "apt-get install chromium", "PHI3V_CHROMIUM=<chromium binary>"):
        assert way in reason


@pytest.mark.parametrize("value, expected", [(None, False), ("", False), ("0", False), ("1", True), ("yes", True)])
def test_the_require_flag(value, expected):
    assert required({} if value is None else {"PHI3V_REQUIRE_BROWSER": value}) is expected


def run_browser_test(tmp_path: Path, **environ: str) -> subprocess.CompletedProcess:
    """tests/test_app_browser.py in a pytest of its own, on a PATH without any browser and with an empty
    Playwright download folder: as on a fresh machine without chromium. (--noconftest: conftest.py
    imports torch, which this decision does not need; the module imports it only once a browser is found.)"""
    bare = tmp_path / "bin"
    bare.mkdir(exist_ok=True)
    (bare / "python").symlink_to(sys.executable) if not (bare / "python").exists() else None
    # PYTEST_ADDOPTS of the outer run could name this very module: the inner pytest would start it again, forever.
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PHI3V_CHROMIUM", "PHI3V_REQUIRE_BROWSER", "PYTEST_ADDOPTS")}
    environment = {**clean, "PATH": str(bare), "PLAYWRIGHT_BROWSERS_PATH": str(tmp_path / "no-downloads"),
                   "OMP_NUM_THREADS": "1", **environ}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "--noconftest",
                           "tests/test_app_browser.py"], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.e2e
def test_a_machine_without_a_browser_skips_the_test_and_says_why_in_the_summary(tmp_path):
    done = run_browser_test(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = done.stdout
    assert "1 skipped" in summary and "SKIPPED [1]" in summary
    assert "no chromium for the browser test (PHI3V_CHROMIUM is unset" in summary and "make browser" in summary


@pytest.mark.e2e
def test_where_a_browser_is_required_its_absence_fails_the_test(tmp_path):
    done = run_browser_test(tmp_path, PHI3V_REQUIRE_BROWSER="1", PHI3V_CHROMIUM=str(tmp_path / "nowhere"))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 failed" in done.stdout
    assert f"PHI3V_CHROMIUM={tmp_path / 'nowhere'} is not an executable file" in done.stdout
    assert "(PHI3V_REQUIRE_BROWSER is set)" in done.stdout



@pytest.mark.e2e
def test_a_browser_that_does_not_start_is_skipped_quoting_why(tmp_path):
    broken = executable(tmp_path / "broken" / "chrome")
    broken.write_text("#!/bin/sh\necho 'error while loading shared libraries: libnss3.so' >&2\nexit 127\n")
    done = run_browser_test(tmp_path, PHI3V_CHROMIUM=str(broken))
    assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"{broken} does not start (" in done.stdout and "playwright install-deps chromium" in done.stdout


def test_ci_runs_make_test_with_the_browser_required(tmp_path):
    """.ci/run exports PHI3V_REQUIRE_BROWSER=1 for `make test` (here a fake make that records it; with
    PHI3V_CHROMIUM set, .ci/run has a browser and installs nothing)."""
    fake = executable(tmp_path / "bin" / "make")
    fake.write_text(f'#!/bin/sh\necho "$@ PHI3V_REQUIRE_BROWSER=$PHI3V_REQUIRE_BROWSER" > {tmp_path / "made"}\n')
    environment = {"PATH": f"{fake.parent}:/usr/bin:/bin", "PHI3V_CHROMIUM": sys.executable, "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(REPO / ".ci" / "run")], env=environment, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "made").read_text() == "test PHI3V_REQUIRE_BROWSER=1\n"
