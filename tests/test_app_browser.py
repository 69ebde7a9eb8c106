"""Tier 3: the web demo in a real browser. `python -m phi3v.app` runs as a subprocess on a free port of
127.0.0.1; headless Chromium, driven by Playwright's python package, opens the page, uploads photos
(and files that are refused, and two photos of one product at once) and reads what the page shows, at
desktop and phone widths.

Which chromium: tests/browser.py (PHI3V_CHROMIUM, then chromium/google-chrome on PATH, then
Playwright's own download). Without one the test is SKIPPED with a reason naming the ways to get one
(pytest's summary shows it); with PHI3V_REQUIRE_BROWSER=1 (.ci/run) it FAILS instead.
The screenshots land in the test's tmp dir; with PHI3V_SCREENSHOT=<path.png> the desktop one is also
copied there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from app_client import multipart
from browser import HOW_TO_GET_ONE, find_chromium, missing_reason, required

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
# Offline-safe: no GPU process, no QUIC, none of Chrome's background calls home.
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EMPTY = "\u2013"  # what an answer field shows before (and instead of) an answer


def unavailable(reason: str) -> None:
    """No usable browser: a failure where one is required (CI), a skip elsewhere."""
    if required():
        pytest.fail(f"{reason} (PHI3V_REQUIRE_BROWSER is set)", pytrace=False)
    pytest.skip(reason)


def chromium() -> Path:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("the browser test needs Playwright's python package: pip install -e '.[dev]'")
    found = find_chromium()
    if found.binary is None:
        unavailable(missing_reason(found))
    return found.binary


def start_app(*args: str) -> tuple[subprocess.Popen, str]:
    """`python -m phi3v.app ... port=0`, and its URL once it serves (the line with " on http://")."""
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


def answer_shown(page) -> dict[str, str]:
    return {key: page.locator(f"#{key}").inner_text()
            for key in ("answer-text", "answer-title", "answer-category", "answer-price", "latency", "status")}


def does_not_start(binary: Path, problem: Exception) -> str:
    first_line = str(problem).strip().splitlines()[0] if str(problem).strip() else type(problem).__name__
    return (f"{binary} does not start ({first_line}): install its system libraries (`sudo .venv/bin/python -m "
            f"playwright install-deps chromium`) or {HOW_TO_GET_ONE}")


@pytest.mark.slow
def test_upload_a_photo_in_chromium_and_read_the_answer(tmp_path):
    binary = chromium()
    from playwright.sync_api import Error, expect, sync_playwright

    requests, failures = [], []
    with sync_playwright() as playwright:
        try:  # first: a browser that does not start is found out before the model is built
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(binary), headless=True, args=BROWSER_ARGS,
                viewport={"width": 1280, "height": 860},
            )
        except Error as problem:  # e.g. a Playwright download without the system libraries it needs
            unavailable(does_not_start(binary, problem))
        try:
            from demo_run import PRODUCTS, build_demo_run, product_photo  # torch: only once a browser runs

            run = build_demo_run(tmp_path / "demo")
            photo, back = tmp_path / "navy.png", tmp_path / "back.png"
            product_photo("navy").save(photo)
            product_photo("gold", (160, 260)).save(back)
            not_a_photo = tmp_path / "notes.txt"
            not_a_photo.write_text("a shopping list, not a photo")
            too_big = tmp_path / "huge.jpg"
            too_big.write_bytes(b"\xff\xd8\xff" + bytes(1_100_000))  # over max_upload_mb=1: the browser refuses it
            app, url = start_app(f"adapter={run / 'adapter'}", "max_new_tokens=24", "max_upload_mb=1")
            try:
                page = browser.new_page()
                page.on("request", lambda request: requests.append(request.url))
                page.on("response", lambda response: failures.append((response.status, response.url))
                        if response.status >= 400 else None)
                page.goto(url)
                expect(page.locator("#gallery .card")).to_have_count(len(PRODUCTS), timeout=30_000)
                expect(page.locator("#gallery .card").first).to_contain_text("Check Wool Scarf")
                # the task's fields, generically: the header names them, a card shows each one and its check
                expect(page.locator("header")).to_contain_text("get its title, category and price")
                expect(page.locator("#gallery .card .t").first).to_have_text(
                    "Check Wool Scarf \u00b7 SCARVES \u00b7 450")
                verdicts = page.locator("#gallery .card > div:last-child")  # the line of checks, class ok or bad
                expect(verdicts.first).to_have_text("category right, price -7%")
                expect(verdicts.nth(2)).to_have_text("category wrong, price not parsed")
                labels = page.locator("#answer-fields dt").all_inner_texts()

                page.set_input_files("#file", str(not_a_photo))
                expect(page.locator("#error")).to_have_text(
                    "This file is not a photo (it is text, a web page or another kind of file). "
                    "Send a JPEG, PNG, WebP or GIF photo.", timeout=30_000)

                page.set_input_files("#file", str(photo))
                expect(page.locator("#status")).to_have_text("done", timeout=60_000)
                expect(page.locator("#error")).to_have_text("")  # the previous file's error is gone
                shown = answer_shown(page)
                page.screenshot(path=str(tmp_path / "app.png"), full_page=True)

                page.set_input_files("#file", [str(photo), str(back)])  # one product, two photos: one request
                expect(page.locator("#preview img")).to_have_count(2)  # this request's (the last showed one)
                expect(page.locator("#status")).to_have_text("done", timeout=60_000)
                two_previews = page.locator("#preview img").count()
                shown_two = answer_shown(page)

                page.set_input_files("#file", str(too_big))  # refused by the page: the old answer goes too
                expect(page.locator("#error")).to_have_text(
                    "The file is 1.1 MB; the limit is 1 MB. Send a smaller photo.")
                after_refusal = answer_shown(page)
                preview_hidden = page.locator("#preview").is_hidden()

                page.set_viewport_size({"width": 420, "height": 860})  # a phone: the columns stack
                page.wait_for_timeout(200)
                sections = [page.locator("main > section").nth(i).bounding_box() for i in range(2)]
                gallery = page.locator("#gallery").bounding_box()
                page_width = page.evaluate("document.documentElement.scrollWidth")
                page.screenshot(path=str(tmp_path / "app-420.png"), full_page=True)
                # The page shows what the server answers for these bytes (greedy decoding: deterministic).
                expected = json.loads(urllib.request.urlopen(urllib.request.Request(
                    f"{url}/api/predict", data=photo.read_bytes(), method="POST"), timeout=60).read())
                form, headers = multipart([("photo", "a.png", photo.read_bytes()),
                                           ("photo", "b.png", back.read_bytes())])
                expected_two = json.loads(urllib.request.urlopen(urllib.request.Request(
                    f"{url}/api/predict", data=form, headers=headers, method="POST"), timeout=60).read())
            finally:
                app.terminate()
                app.wait(30)
        finally:
            browser.close()
    assert shown["answer-text"] == expected["text"].strip() and expected["text"].strip()
    assert labels == ["Product", "Category", "Full Price", "Latency"]
    assert shown["answer-title"] == (expected["fields"]["title"] or "(not found)")
    assert shown["answer-category"] == (expected["fields"]["category"] or "(not found)")
    assert re.fullmatch(r"\d+\.\d\d s( \(\+\d+\.\d\d s queued\))?", shown["latency"])
    assert two_previews == 2 and shown_two["answer-text"] == expected_two["text"].strip() and expected_two["text"]
    assert after_refusal == {key: EMPTY for key in shown if key != "status"} | {"status": ""} and preview_hidden
    assert (tmp_path / "app.png").stat().st_size > 10_000
    for box in sections:  # one column: each section within the 420 px, the gallery below the upload
        assert box["x"] >= 0 and box["x"] + box["width"] <= 420
    assert sections[1]["y"] >= sections[0]["y"] + sections[0]["height"] and gallery["x"] + gallery["width"] <= 420
    assert page_width <= 420  # nothing wider than the phone (a long model path wraps)
    outside = [u for u in requests if not u.startswith(url) and not u.startswith(("blob:", "data:"))]
    assert not outside, f"the page asked for something outside the app: {outside}"
    assert f"{url}/favicon.svg" in requests
    assert failures == [(400, f"{url}/api/predict")], failures  # the text file; no 404 (favicon), nothing else
    if os.environ.get("PHI3V_SCREENSHOT"):
        shutil.copyfile(tmp_path / "app.png", os.environ["PHI3V_SCREENSHOT"])
