"""Tier 3: the web demo in a real browser. `python -m phi3v.app` runs as a subprocess on a free port of
127.0.0.1; headless Chromium (Debian's `chromium`, driven by Playwright's python package; Playwright's own
browser download cannot work offline) opens the page, uploads a photo and reads the answer from it.

The screenshot lands in the test's tmp dir; with PHI3V_SCREENSHOT=<path.png> it is also copied there.
Without a browser the test FAILS (the demo is a promise of the README): see BROWSER_MISSING.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from demo_run import PRODUCTS, build_demo_run, product_photo

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("PHI3V_CHROMIUM", "/usr/bin/chromium"))
BROWSER_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync"]
BROWSER_MISSING = (
    "the browser test needs Debian's chromium and Playwright's python package: as root `apt-get install -y "
    "chromium`, then `.venv/bin/python -m pip install -e '.[dev]'` (or set PHI3V_CHROMIUM=<chromium binary>)"
)


def browser_available() -> None:
    problems = []
    if not CHROMIUM.is_file():
        problems.append(f"{CHROMIUM} not found")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright package is not installed")
    if problems:
        pytest.fail(f"{'; '.join(problems)}. {BROWSER_MISSING}", pytrace=False)


def start_app(*args: str) -> tuple[subprocess.Popen, str]:
    """`python -m phi3v.app ... port=0`, and its URL once it serves (printed on its first line)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "phi3v.app", "host=127.0.0.1", "port=0", *args], cwd=REPO,
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if " on http://" in line:
            return process, line.split(" on ")[1].split()[0]
    process.kill()
    raise AssertionError("the app did not start:\n" + "".join(lines[-40:]))


@pytest.mark.slow
def test_upload_a_photo_in_chromium_and_read_the_answer(tmp_path):
    browser_available()
    from playwright.sync_api import expect, sync_playwright

    run = build_demo_run(tmp_path / "demo")
    photo = tmp_path / "navy.png"
    product_photo("navy").save(photo)
    not_a_photo = tmp_path / "notes.txt"
    not_a_photo.write_text("a shopping list, not a photo")
    app, url = start_app(f"adapter={run / 'adapter'}", "max_new_tokens=24")
    requests: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS,
                viewport={"width": 1280, "height": 860},
            )
            try:
                page = browser.new_page()
                page.on("request", lambda request: requests.append(request.url))
                page.goto(url)
                expect(page.locator("#gallery .card")).to_have_count(len(PRODUCTS), timeout=30_000)
                expect(page.locator("#gallery .card").first).to_contain_text("Check Wool Scarf")

                page.set_input_files("#file", str(not_a_photo))
                expect(page.locator("#error")).to_contain_text("cannot be used as a photo", timeout=30_000)

                page.set_input_files("#file", str(photo))
                expect(page.locator("#status")).to_have_text("done", timeout=60_000)
                shown = {key: page.locator(f"#{key}").inner_text()
                         for key in ("answer-text", "answer-title", "answer-category", "answer-price", "latency")}
                page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            finally:
                browser.close()
        # The page shows what the server answers for these bytes (greedy decoding: deterministic).
        expected = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{url}/api/predict", data=photo.read_bytes(), method="POST"), timeout=60).read())
    finally:
        app.terminate()
        app.wait(30)
    assert shown["answer-text"] == expected["text"].strip() and expected["text"].strip()
    assert shown["answer-title"] == (expected["title"] or "(not found)")
    assert shown["answer-category"] == (expected["category"] or "(not found)")
    assert shown["latency"].endswith(" s") and float(shown["latency"].split()[0]) > 0
    assert (tmp_path / "app.png").stat().st_size > 10_000
    outside = [u for u in requests if not u.startswith(url) and not u.startswith(("blob:", "data:"))]
    assert not outside, f"the page asked for something outside the app: {outside}"
    if os.environ.get("PHI3V_SCREENSHOT"):
        shutil.copyfile(tmp_path / "app.png", os.environ["PHI3V_SCREENSHOT"])
