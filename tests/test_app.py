"""Tier 2: the web demo's routes, answers and words, served in-process as in production (uvicorn on
127.0.0.1, tests/app_client.py); the hostile clients are tests/test_app_protocol.py, the process
(memory, signals) tests/test_app_server.py, the page in a browser tests/test_app_browser.py.

The model is the tiny preset with a seeded random LoRA (tests/demo_run.py): its answers are noise,
but deterministic and different for differently coloured photos, which is all these tests need.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
import torch
from app_client import encoded, multipart, raw, request, serving, status_of
from demo_run import PRODUCTS, build_demo_run, product_photo
from omegaconf import OmegaConf
from PIL import Image

from phi3v.app import check_config, gallery_dir, model_name
from phi3v.cli import UsageError
from phi3v.data.splits import split_counts
from phi3v.demo.access import start_lines
from phi3v.demo.gallery import load_gallery
from phi3v.demo.predictor import load_predictor
from phi3v.task import TaskSpec

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

MAX_UPLOAD_MB = 2
MAX_PIXELS = 4_000_000


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return build_demo_run(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def predictor(run):
    return load_predictor(export=run / "adapter", max_new_tokens=12, max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def served(run, predictor):
    gallery = load_gallery(run, predictor.task)
    with serving(predictor, gallery, split_counts(run), max_upload_mb=MAX_UPLOAD_MB) as (state, port):
        yield state, port


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


def test_an_upload_gets_the_model_answer_parsed(served):
    state, port = served
    photo = encoded(product_photo("navy"))
    status, headers, body = request(port, "POST", "/api/predict", photo)
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(body)
    expected = state.predictor.answer(photo)  # the same photo straight through the predictor
    assert answer["text"] == expected.text and answer["text"]
    assert answer["fields"] == state.predictor.task.parse(answer["text"]) == expected.fields
    assert list(answer["fields"]) == ["title", "category", "price"]  # the task's fields, in answer order
    assert answer["latency_s"] > 0 and answer["queued_s"] >= 0


def test_a_form_upload_and_any_content_type_get_the_same_answer(served):
    """`curl -F photo=@x.png` (multipart, any field name) and `curl --data-binary @x.png` (which says
    application/x-www-form-urlencoded) are the raw-bytes answer."""
    state, port = served
    photo = encoded(product_photo("darkgreen"))
    expected = state.predictor.answer(photo).text
    body, headers = multipart([("photo", "x.png", photo)], fields={"note": "a comment field is ignored"})
    assert json.loads(request(port, "POST", "/api/predict", body, headers)[2])["text"] == expected
    body, headers = multipart([("file", "shoe.png", photo)])
    assert json.loads(request(port, "POST", "/api/predict", body, headers)[2])["text"] == expected
    urlencoded = {"Content-Type": "application/x-www-form-urlencoded"}
    assert json.loads(request(port, "POST", "/api/predict", photo, urlencoded)[2])["text"] == expected


BOMB = encoded(Image.new("1", (4000, 2000)))  # 8 MP of one colour: a 1 KB PNG, over the 4 MP limit
PILLOW_BOMB = encoded(Image.new("1", (15000, 12000)))  # 180 MP: over Pillow's own hard limit (178956970) too


@pytest.mark.parametrize("body, status, words", [
    (b"", 400, "The file is empty (0 bytes). Choose a photo."),
    (b"<html><body>not a photo</body></html>", 400,
     "This file is not a photo (it is text, a web page or another kind of file). Send a JPEG, PNG, WebP or GIF photo."),
    (b"hello, I am text\n", 400, "This file is not a photo (it is text"),
    (encoded(product_photo("red"))[:300], 400,
     "This image file is damaged or cut off: its pixels cannot be decoded. Send the complete photo again."),
    (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', 400,
     "This is a SVG (vector graphics) file, which the demo cannot read. Convert it to JPEG, PNG, WebP or GIF"),
    (BOMB, 400, "This image is too large to read: 8.0 megapixels; the limit is 4 megapixels. Resize it"),
    (PILLOW_BOMB, 400, "This image is too large to read: 180.0 megapixels; the limit is 4 megapixels."),
    (b"x" * (MAX_UPLOAD_MB * 1_000_000 + 1), 413, "The file is 2.0 MB; the limit is 2 MB. Send a smaller photo."),
], ids=["zero-bytes", "html", "text", "truncated-png", "svg", "decompression-bomb", "pillow-bomb", "too-large"])
def test_bad_uploads_get_a_sentence_in_the_users_terms(served, body, status, words):
    _, port = served
    got, headers, data = request(port, "POST", "/api/predict", body)
    assert got == status and headers["content-type"] == "application/json"
    message = error_of(data)
    assert message.startswith(words)
    for internal in ("b'", "Traceback", "pixels >", "DOS attack", "178956970", "Pillow"):
        assert internal not in message


@pytest.mark.parametrize("files, words", [
    ([], "The form has no file; send the photo as a file field, e.g. curl -F photo=@shoe.jpg <url>/api/predict"),
    ([("photo", f"{k}.png", b"1") for k in range(5)], "The form has 5 files; send at most 4 photos of one product, "
                                                        "e.g. curl -F photo=@front.jpg -F photo=@back.jpg"),
    ([("photo", f"{k}.png", b"1") for k in range(6)], "The form cannot be read (Too many files. Maximum number of "
                                                        "files is 5.). Send each photo as a file field"),
], ids=["no-file", "five-files", "six-files"])
def test_a_form_without_one_to_max_photos_files_is_told_how_to_send_them(served, files, words):
    _, port = served
    body, headers = multipart(files, fields={"photo": "not a file"})
    status, _, data = request(port, "POST", "/api/predict", body, headers)
    assert status == 400 and error_of(data).startswith(words)


def test_a_broken_form_is_a_400_with_the_curl_example(served):
    _, port = served
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    status, _, data = request(port, "POST", "/api/predict", b"--xyz\r\nno headers, no end", headers)
    assert status == 400 and "curl -F photo=@shoe.jpg" in error_of(data)


def test_a_bug_is_an_internal_error_without_its_traceback(served, monkeypatch, caplog):
    state, port = served

    def broken(inputs):
        raise RuntimeError("secret detail of a bug")

    monkeypatch.setattr(state.predictor, "generate", broken)
    status, _, data = request(port, "POST", "/api/predict", encoded(product_photo("navy")))
    assert status == 500 and json.loads(data) == {"error": "internal error (the server log has the details)"}
    assert "secret detail of a bug" in caplog.text  # ... which the server log has


@pytest.mark.parametrize("path", [
    "/etc/passwd", "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd", "/gallery/0/../../../etc/passwd",
    f"/gallery/{len(PRODUCTS)}/photo", "/gallery/-1/photo", "/gallery/99999999999999999999/photo",
    "/gallery/0/other", "/api/predict/../../etc/passwd",
])
def test_no_path_outside_the_routes_is_served(served, path):
    _, port = served
    response, _, _ = raw(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status_of(response) == 404 and b"root:" not in response
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"].startswith("There is no ")


def test_other_methods_are_405_with_a_sentence(served):
    _, port = served
    status, headers, data = request(port, "GET", "/api/predict")
    assert status == 405 and error_of(data) == "GET is not accepted at /api/predict." and "POST" in headers["allow"]
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
    assert results == {f"{c}{i}": (200, expected[c]) for i in range(2) for c in photos}
    assert len(overlaps) == 6 and max(overlaps) == 1


def test_page_favicon_info_and_gallery(served):
    state, port = served
    status, headers, page = request(port, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b'id="answer-fields"' in page
    assert b"http://" not in page and b"https://" not in page  # nothing loaded from elsewhere
    assert b'<link rel="icon" href="/favicon.svg"' in page and b"@media (max-width: 700px)" in page
    for icon in ("/favicon.svg", "/favicon.ico"):
        status, headers, svg = request(port, "GET", icon)
        assert status == 200 and headers["content-type"] == "image/svg+xml" and svg.startswith(b"<svg")
    info = json.loads(request(port, "GET", "/api/info")[2])
    assert info["gallery_size"] == 3 and info["split_counts"] == {"train": 2, "val": 0, "test": 3}
    assert (info["model"], info["max_upload_mb"], info["max_megapixels"]) == (state.predictor.source, 2, 4.0)
    assert info["max_photos"] == 4
    assert info["fields"] == [{"name": "title", "label": "Product", "type": "text"},
                              {"name": "category", "label": "Category", "type": "category"},
                              {"name": "price", "label": "Full Price", "type": "number"}]
    gallery = json.loads(request(port, "GET", "/api/gallery")[2])
    first, second, third = ({field["name"]: field for field in item["fields"]} for item in gallery)
    assert [field["name"] for field in gallery[0]["fields"]] == ["title", "category", "price"]
    assert first["title"] == {"name": "title", "label": "Product", "type": "text", "true": "Check Wool Scarf",
                              "predicted": "Check Wool Scarf", "error_pct": None, "match": True}
    assert (first["category"]["true"], first["category"]["predicted"], first["category"]["match"]) == (
        "SCARVES", "SCARVES", True)
    assert (first["price"]["true"], first["price"]["predicted"]) == (450.0, 420.0)
    assert first["price"]["error_pct"] == pytest.approx(-100 * 30 / 450) and first["price"]["match"] is None
    assert (second["category"]["predicted"], second["category"]["match"], second["price"]["predicted"]) == (
        "BAGS", False, 990.0)
    assert (third["title"]["predicted"], third["price"]["predicted"], third["price"]["error_pct"]) == (None, None, None)
    assert gallery[2]["prediction"] == PRODUCTS[2][5]
    status, headers, thumbnail = request(port, "GET", "/gallery/1/thumbnail")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumbnail)).size) <= 192
    assert request(port, "GET", "/gallery/1/photo")[2] == state.gallery[1].image_paths[0].read_bytes()
    assert request(port, "GET", "/gallery/1/photo/0")[2] == state.gallery[1].image_paths[0].read_bytes()
    assert (gallery[1]["photos"], gallery[1]["thumbnails"]) == (["/gallery/1/photo/0"], ["/gallery/1/thumbnail/0"])
    status, _, body = request(port, "GET", "/gallery/1/photo/1")
    assert status == 404 and error_of(body) == "Gallery product 1 has no photo 1 (it has 1, numbered from 0)."


def test_gallery_skips_rows_whose_photo_is_gone(run, tmp_path, caplog):
    copy = tmp_path / "run"
    (copy / "predictions").mkdir(parents=True)
    text = (run / "predictions" / "test.csv").read_text()
    (copy / "predictions" / "test.csv").write_text(text.replace(PRODUCTS[0][0], "missing"))
    items = load_gallery(copy, TaskSpec())
    assert [item.fields[0].true for item in items] == ["Leather Belt", "Bucket Hat"]
    assert "1 products listed" in caplog.text and "have a photo that no longer exists" in caplog.text


def config(**values):
    base = dict(adapter=None, export=None, preset=None, run=None, dtype=None, token=None, max_new_tokens=8,
                max_upload_mb=1, max_photos=2, max_pixels=10, decode_pixels=20, body_timeout_s=1, header_timeout_s=1,
                max_connections=2, max_queue=2, drain_timeout_s=1)
    return OmegaConf.create({**base, **values})


@pytest.mark.parametrize("key", ["max_new_tokens", "max_upload_mb", "max_photos", "max_pixels", "decode_pixels",
                                 "body_timeout_s", "header_timeout_s", "max_connections", "max_queue",
                                 "drain_timeout_s"])
def test_every_limit_must_be_positive_and_the_message_names_it(key):
    with pytest.raises(UsageError, match=f"^{key}=0 must be > 0$"):
        check_config(config(preset="tiny", **{key: 0}))


def test_config_needs_exactly_one_model_and_names_the_key(run, tmp_path, monkeypatch):
    monkeypatch.delenv("PHI3V_APP_TOKEN", raising=False)
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
    with pytest.raises(UsageError, match="decode_pixels=9 must be >= max_pixels=10"):
        check_config(config(preset="tiny", decode_pixels=9))
    check_config(config(preset="tiny", decode_pixels=10))
    assert gallery_dir(config(adapter=str(run / "adapter"))) == run.resolve()
    assert gallery_dir(config(preset="tiny")) is None


@pytest.mark.parametrize("token, ok", [("abcdefgh", True), ("A-z_0.9~xyz", True), ("short", False),
                                       ("has space in it", False), ("semi;colon;x", False), ("ünïcödé-token", False)])
def test_a_token_must_be_url_safe_from_the_key_or_the_environment(token, ok, monkeypatch):
    monkeypatch.delenv("PHI3V_APP_TOKEN", raising=False)
    for cfg, environment in ((config(preset="tiny", token=token), None), (config(preset="tiny"), token)):
        if environment is not None:
            monkeypatch.setenv("PHI3V_APP_TOKEN", environment)
        if ok:
            check_config(cfg)
        else:
            with pytest.raises(UsageError, match=r"token \(or PHI3V_APP_TOKEN\) must be 8 or more"):
                check_config(cfg)


def test_off_loopback_the_start_lines_warn_and_info_shows_no_absolute_path(run):
    adapter = str(run / "adapter")
    assert start_lines("preset tiny", "127.0.0.1", 7860, None) == [
        "phi3v demo of preset tiny on http://127.0.0.1:7860  (Ctrl-C stops it)"]
    assert len(start_lines("x", "::1", 7860, None)) == 1 and len(start_lines("x", "localhost", 1, None)) == 1
    first, warning = start_lines("preset tiny", "0.0.0.0", 7860, None)
    assert first == "phi3v demo of preset tiny on http://0.0.0.0:7860  (Ctrl-C stops it)"
    assert warning == ("warning: host=0.0.0.0 opens the demo to the network WITHOUT a password: anyone who can reach "
                       "port 7860 can use it. Set token=<secret> (or PHI3V_APP_TOKEN) to require one.")
    first, note = start_lines("x", "192.168.1.5", 80, "s3cret-token")
    assert first == "phi3v demo of x on http://192.168.1.5:80/?token=s3cret-token  (Ctrl-C stops it)"
    assert note.startswith("host=192.168.1.5: open to the network; requests need the token")
    assert model_name(config(adapter=adapter), adapter, loopback=True) == adapter
    assert model_name(config(adapter=adapter), adapter, loopback=False) == "run/adapter"
    assert model_name(config(preset="tiny"), "preset tiny (random)", loopback=False) == "preset tiny (random)"


def test_the_shipped_config_composes_and_passes_its_checks(monkeypatch):
    from hydra import compose, initialize_config_dir

    monkeypatch.delenv("PHI3V_APP_TOKEN", raising=False)
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("app", overrides=["preset=tiny"])
    check_config(cfg)
    assert (cfg.host, cfg.port, cfg.adapter, cfg.export, cfg.run, cfg.token) == ("127.0.0.1", 7860, None, None, None,
                                                                                 None)
    from phi3v.demo.limits import ServerLimits

    assert {key: cfg[key] for key in ServerLimits.keys()} == ServerLimits().__dict__  # YAML = the defaults


# ---- several photos of one product (issue 22) -------------------------------------------------------------
def test_a_two_photo_form_is_one_product_asked_with_a_tag_per_photo_in_order(served):
    state, port = served
    front, back = encoded(product_photo("navy")), encoded(product_photo("gold", (180, 300)))
    inputs = state.predictor.prepare([front, back])
    assert sorted(set(inputs["input_ids"][inputs["input_ids"] < 0].tolist())) == [-2, -1]  # <|image_1|>, <|image_2|>
    assert inputs["pixel_values"].shape[0] == 2
    expected = state.predictor.answer([front, back]).text
    body, headers = multipart([("photo", "front.png", front), ("photo", "back.png", back)])
    status, _, data = request(port, "POST", "/api/predict", body, headers)
    assert status == 200 and json.loads(data)["text"] == expected
    swapped = state.predictor.prepare([back, front])  # the order is the question's: another input
    assert not torch.equal(swapped["pixel_values"], inputs["pixel_values"])
    one = state.predictor.prepare([front])  # a form with one file is the raw-body photo
    assert torch.equal(one["input_ids"], state.predictor.prepare(front)["input_ids"])


def test_one_bad_photo_among_several_is_named_by_its_place(served):
    _, port = served
    body, headers = multipart([("photo", "a.png", encoded(product_photo("navy"))), ("photo", "b.txt", b"a note")])
    status, _, data = request(port, "POST", "/api/predict", body, headers)
    assert status == 400 and error_of(data) == ("Photo 2 of 2: This file is not a photo (it is text, a web page or "
                                                "another kind of file). Send a JPEG, PNG, WebP or GIF photo.")


def test_a_requests_photos_count_together_against_max_pixels(served):
    """Two 2.25 MP photos, each under the 4 MP limit, are 4.5 MP together: refused before decoding."""
    _, port = served
    big = encoded(Image.new("RGB", (1500, 1500), "gray"))
    body, headers = multipart([("photo", "a.png", big), ("photo", "b.png", big)])
    status, _, data = request(port, "POST", "/api/predict", body, headers)
    assert status == 400 and error_of(data) == (
        "These 2 photos are too large to read together: 4.5 megapixels; the limit is 4 megapixels for one "
        "product's photos. Resize them (a few megapixels each are plenty) and send them again.")
    assert request(port, "POST", "/api/predict", big)[0] == 200  # one of them alone fits


def test_the_gallery_shows_and_serves_every_photo_of_a_product(run, predictor, tmp_path):
    copy = tmp_path / "run"
    (copy / "predictions").mkdir(parents=True)
    back = tmp_path / "back.png"
    product_photo("gold", (100, 200)).save(back)
    rows = (run / "predictions" / "test.csv").read_text().splitlines()
    first = rows[1].split(",", 2)
    rows[1] = ",".join([first[0], f"{first[1]};{back}", first[2]])  # product 0 has two photos
    (copy / "predictions" / "test.csv").write_text("\n".join(rows) + "\n")
    gallery = load_gallery(copy, predictor.task)
    assert [len(item.image_paths) for item in gallery] == [2, 1, 1] and gallery[0].image_paths[1] == back
    with serving(predictor, gallery) as (_, port):
        item = json.loads(request(port, "GET", "/api/gallery")[2])[0]
        assert item["photos"] == ["/gallery/0/photo/0", "/gallery/0/photo/1"]
        assert item["thumbnails"] == ["/gallery/0/thumbnail/0", "/gallery/0/thumbnail/1"]
        assert request(port, "GET", "/gallery/0/photo/1")[2] == back.read_bytes()
        status, headers, thumbnail = request(port, "GET", "/gallery/0/thumbnail/1")
        assert status == 200 and Image.open(io.BytesIO(thumbnail)).size == (96, 192)
        assert request(port, "GET", "/gallery/0/photo/2")[0] == 404
    back.unlink()  # a product with one photo gone is left out, counted
    assert [len(item.image_paths) for item in load_gallery(copy, predictor.task)] == [1, 1]
