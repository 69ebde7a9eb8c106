"""Tier 2: the web demo's handlers, served in-process on 127.0.0.1 (the browser test drives the page).

The model is the tiny preset with a seeded random LoRA (tests/demo_run.py): its answers are noise,
but deterministic and different for differently coloured photos, which is all these tests need.
"""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
from pathlib import Path

import pytest
from demo_run import PRODUCTS, build_demo_run, product_photo
from omegaconf import OmegaConf
from PIL import Image

from phi3v.app import check_config, gallery_dir
from phi3v.cli import UsageError
from phi3v.demo.gallery import load_gallery, split_counts
from phi3v.demo.predictor import load_predictor
from phi3v.demo.server import DemoState, make_server
from phi3v.task import PromptTemplate

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

MAX_UPLOAD = 2_000_000


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return build_demo_run(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def served(run):
    predictor = load_predictor(export=run / "adapter", max_new_tokens=12, max_pixels=4_000_000)
    state = DemoState(predictor, load_gallery(run, predictor.template), split_counts(run), MAX_UPLOAD)
    server = make_server(state, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, server.server_address[1]
    server.shutdown()
    server.server_close()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, response.getheader("Content-Type"), data


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_an_upload_gets_the_model_answer_parsed(served):
    state, port = served
    photo = encoded(product_photo("navy"))
    status, kind, body = request(port, "POST", "/api/predict", photo)
    assert status == 200 and kind == "application/json"
    answer = json.loads(body)
    expected = state.predictor.answer(photo)  # the same photo straight through the predictor
    assert answer["text"] == expected.text and answer["text"]
    parsed = state.predictor.template.parse(answer["text"])
    assert (answer["title"], answer["category"], answer["price"]) == (parsed.title, parsed.category, parsed.price)
    assert answer["latency_s"] > 0 and answer["queued_s"] >= 0


BOMB = encoded(Image.new("1", (4000, 2000)))  # 8 MP of one colour: a 1 KB PNG, over the 4 MP limit


@pytest.mark.parametrize("body, status, words", [
    (b"", 400, "empty (0 bytes)"),
    (b"<html><body>not a photo</body></html>", 400, "cannot be used as a photo"),
    (encoded(product_photo("red"))[:300], 400, "cannot be used as a photo"),  # cut off
    (BOMB, 400, "too many pixels"),
    (b"x" * (MAX_UPLOAD + 1), 413, "the limit is 2 MB"),
], ids=["zero-bytes", "html", "truncated-png", "decompression-bomb", "too-large"])
def test_bad_uploads_get_a_clear_message(served, body, status, words):
    _, port = served
    got, kind, data = request(port, "POST", "/api/predict", body)
    assert got == status and kind == "application/json"
    message = json.loads(data)["error"]
    assert words in message and "Traceback" not in message


def test_a_bug_is_an_internal_error_without_its_traceback(served, monkeypatch, caplog):
    state, port = served

    def broken(data):
        raise RuntimeError("secret detail of a bug")

    monkeypatch.setattr(state.predictor, "answer", broken)
    status, _, data = request(port, "POST", "/api/predict", b"anything")
    assert status == 500 and json.loads(data) == {"error": "internal error (the server log has the details)"}
    assert "secret detail of a bug" in caplog.text  # ... which the server log has


def test_unknown_routes_and_gallery_indices_are_404(served):
    _, port = served
    assert request(port, "GET", "/etc/passwd")[0] == 404
    assert request(port, "GET", f"/gallery/{len(PRODUCTS)}/photo")[0] == 404
    assert request(port, "POST", "/api/other", b"x")[0] == 404


def test_concurrent_users_get_their_own_answers_one_generation_at_a_time(served):
    state, port = served
    photos = {color: encoded(product_photo(color)) for color in ("firebrick", "navy", "darkgreen")}
    expected = {color: state.predictor.answer(photo).text for color, photo in photos.items()}
    assert len(set(expected.values())) == 3, "precondition: the three photos have different answers"
    model, active, overlaps = state.predictor.model, [0], []
    original = model.generate

    def tracked(*args, **kwargs):  # counts generations running at the same time
        active[0] += 1
        overlaps.append(active[0])
        time.sleep(0.05)  # widen the window in which a second request could slip in
        try:
            return original(*args, **kwargs)
        finally:
            active[0] -= 1

    model.generate = tracked
    results, barrier = {}, threading.Barrier(6)

    def user(name: str, color: str) -> None:
        barrier.wait()
        status, _, data = request(port, "POST", "/api/predict", photos[color])
        results[name] = (status, json.loads(data)["text"])

    try:
        users = [threading.Thread(target=user, args=(f"{c}{i}", c)) for i in range(2) for c in photos]
        for thread in users:
            thread.start()
        for thread in users:
            thread.join(120)
    finally:
        del model.generate
    assert {name: result for name, result in results.items()} == {
        f"{c}{i}": (200, expected[c]) for i in range(2) for c in photos
    }
    assert len(overlaps) == 6 and max(overlaps) == 1


def test_page_info_and_gallery(served):
    state, port = served
    status, kind, page = request(port, "GET", "/")
    assert status == 200 and kind.startswith("text/html") and b'id="answer-title"' in page
    assert b"http://" not in page and b"https://" not in page  # nothing loaded from elsewhere
    info = json.loads(request(port, "GET", "/api/info")[2])
    assert info["gallery_size"] == 3 and info["split_counts"] == {"train": 2, "val": 0, "test": 3}
    gallery = json.loads(request(port, "GET", "/api/gallery")[2])
    first, second, third = gallery
    assert (first["true_title"], first["true_category"], first["true_price"]) == ("Check Wool Scarf", "SCARVES", 450.0)
    assert (first["predicted_category"], first["predicted_price"]) == ("SCARVES", 420.0)
    assert first["price_error_pct"] == pytest.approx(-100 * 30 / 450)
    assert (second["predicted_category"], second["predicted_price"]) == ("BAGS", 990.0)
    assert (third["predicted_title"], third["predicted_price"], third["price_error_pct"]) == (None, None, None)
    status, kind, thumbnail = request(port, "GET", "/gallery/1/thumbnail")
    assert status == 200 and kind == "image/jpeg" and max(Image.open(io.BytesIO(thumbnail)).size) <= 192
    assert request(port, "GET", "/gallery/1/photo")[2] == state.gallery[1].image_path.read_bytes()


def test_gallery_skips_rows_whose_photo_is_gone(run, tmp_path, caplog):
    copy = tmp_path / "run"
    (copy / "predictions").mkdir(parents=True)
    text = (run / "predictions" / "test.csv").read_text()
    (copy / "predictions" / "test.csv").write_text(text.replace(PRODUCTS[0][0], "missing"))
    items = load_gallery(copy, PromptTemplate())
    assert [item.true_title for item in items] == ["Leather Belt", "Bucket Hat"]
    assert "1 photos listed" in caplog.text


def config(**values):
    base = dict(adapter=None, export=None, preset=None, run=None, dtype=None, max_new_tokens=8, max_upload_mb=1,
                max_pixels=10)
    return OmegaConf.create({**base, **values})


def test_config_needs_exactly_one_model_and_names_the_key(run, tmp_path):
    check_config(config(adapter=str(run / "adapter")))
    check_config(config(preset="tiny"))
    with pytest.raises(UsageError, match="choose exactly one model"):
        check_config(config())
    with pytest.raises(UsageError, match="got adapter, preset"):
        check_config(config(adapter=str(run / "adapter"), preset="tiny"))
    with pytest.raises(UsageError, match="export=.*not a phi3v export"):
        check_config(config(export=str(tmp_path)))
    with pytest.raises(UsageError, match="preset=huge"):
        check_config(config(preset="huge"))
    with pytest.raises(UsageError, match="max_upload_mb=0"):
        check_config(config(preset="tiny", max_upload_mb=0))
    assert gallery_dir(config(adapter=str(run / "adapter"))) == run.resolve()
    assert gallery_dir(config(preset="tiny")) is None


def test_the_shipped_config_composes_and_passes_its_checks():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("app", overrides=["preset=tiny"])
    check_config(cfg)
    assert (cfg.host, cfg.port, cfg.adapter, cfg.export, cfg.run) == ("127.0.0.1", 7860, None, None, None)
