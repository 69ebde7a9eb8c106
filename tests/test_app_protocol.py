"""Tier 2: the web demo against clients that misbehave, slowly or on purpose (issue 20), driven over
sockets against the server as it runs in production (uvicorn + phi3v.demo.serving, in-process on
127.0.0.1): bodies that never end, heads sent byte by byte, malformed headers, floods of photos,
photos too big to decode together, a missing access token, a shutdown with photos waiting.
Limits are shrunk to fractions of a second so that each test takes about one."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time

import pytest
from app_client import encoded, multipart, raw, request, serving, status_of
from demo_run import build_demo_run, product_photo
from PIL import Image

from phi3v.demo.admission import Capacity, Closed
from phi3v.demo.predictor import Predictor, load_predictor

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]

PHOTO = encoded(product_photo("navy"))
SLACK_S = 3.0  # on top of a deadline: a loaded 2-core machine answers late, a missing deadline never


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    run = build_demo_run(tmp_path_factory.mktemp("demo"))
    return load_predictor(export=run / "adapter", max_new_tokens=4, max_pixels=4_000_000)


def head(method: str = "POST", path: str = "/api/predict", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def response_status(sock: socket.socket) -> int:
    """Read one whole response from a kept-alive connection; its status."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response.status


def answers(port: int) -> bool:
    return request(port, "GET", "/api/info", timeout=10)[0] == 200


def test_a_body_shorter_than_its_content_length_is_cut_at_the_deadline_with_408(predictor):
    with serving(predictor, body_timeout_s=1) as (_, port):
        response, seconds, closed = raw(port, head(Content_Length="10000000") + b"abc", wait=1 + SLACK_S + 5)
        assert status_of(response) == 408 and closed and 0.9 < seconds < 1 + SLACK_S
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"] == (
            "The upload stopped: 0.0 MB of 10.0 MB arrived in 1 s. Check the connection and send the photo again.")
        assert answers(port)


@pytest.mark.parametrize("value", ["²".encode(), "²".encode("latin-1"), b"12a", b"-1", b"1e3", b"", b"3, 4"])
def test_a_content_length_that_is_not_a_number_is_a_400(predictor, value):
    with serving(predictor) as (_, port):
        response, seconds, closed = raw(port, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + value
                                        + b"\r\n\r\nabc")
        assert status_of(response) == 400 and closed and seconds < SLACK_S
        assert answers(port)


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(predictor):
    with serving(predictor, max_upload_mb=1) as (_, port), socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(SLACK_S)
        sock.sendall(head(Content_Length="1000001"))  # no body follows
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 413 and json.loads(response.read()) == {
            "error": "The file is 1.0 MB; the limit is 1 MB. Send a smaller photo."}


def test_a_client_sending_a_body_over_the_limit_gets_the_413_not_a_reset(predictor):
    """http.client sends the whole body before it reads: the rest is read and dropped, then answered."""
    with serving(predictor, max_upload_mb=1) as (_, port):
        for _ in range(5):
            status, _, body = request(port, "POST", "/api/predict", b"x" * 3_000_001)
            assert status == 413 and json.loads(body)["error"].startswith("The file is 3.0 MB; the limit is 1 MB.")


def test_a_chunked_body_is_counted_as_it_streams(predictor):
    def chunked(data: bytes, size: int = 100_000) -> bytes:
        pieces = [data[i:i + size] for i in range(0, len(data), size)]
        return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"

    with serving(predictor, max_upload_mb=0.5) as (state, port):
        response, _, _ = raw(port, head(Transfer_Encoding="chunked", Connection="close") + chunked(PHOTO))
        assert status_of(response) == 200
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["text"] == state.predictor.answer(PHOTO).text
        response, _, _ = raw(port, head(Transfer_Encoding="chunked", Connection="close") + chunked(b"x" * 600_000))
        assert status_of(response) == 413
        assert b"The file is larger than 0.5 MB; the limit is 0.5 MB." in response


def test_a_head_that_does_not_arrive_in_time_closes_the_connection(predictor):
    with serving(predictor, header_timeout_s=1) as (_, port):
        for start in (b"GET / HTTP/1.1\r\nHost: x\r\n", b""):  # headers that never end; nothing at all
            response, seconds, closed = raw(port, start, wait=1 + SLACK_S + 5)
            assert response == b"" and closed and 0.9 < seconds < 1 + SLACK_S
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # slow, but in time
            for piece in (b"GET /api/info HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
                sock.sendall(piece)
                time.sleep(0.25)
            assert response_status(sock) == 200
            time.sleep(0.6)  # the deadline counts again from the end of the answer: the next request is in time
            sock.sendall(head("GET", "/api/info"))
            assert response_status(sock) == 200


def test_the_rest_of_a_refused_body_cannot_hold_the_connection(predictor):
    """A 503 is sent without reading the body; uvicorn then reads and drops the rest. A client still
    trickling it loses the connection at the head deadline."""
    with serving(predictor, header_timeout_s=1, max_queue=1) as (state, port), \
            socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        state.workload.in_flight = 1  # full
        try:
            sock.sendall(head(Content_Length="1000") + b"x")
            assert sock.recv(1000).startswith(b"HTTP/1.1 503")
            start, closed = time.monotonic(), False
            while time.monotonic() - start < 1 + SLACK_S and not closed:
                try:
                    sock.sendall(b"x")
                    closed = sock.recv(1, socket.MSG_DONTWAIT) == b""
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
                time.sleep(0.1)
            assert closed
        finally:
            state.workload.in_flight = 0


def test_clients_that_leave_early_leave_no_traceback(predictor, caplog):
    with serving(predictor) as (_, port):
        for data in (head(Content_Length=str(len(PHOTO))) + PHOTO,  # gone before the answer is written
                     head(Content_Length=str(len(PHOTO))) + PHOTO[:100]):  # gone in the middle of the body
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.sendall(data)
        time.sleep(1.5)
        assert answers(port)
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_control_characters_never_reach_the_log_raw(predictor, caplog):
    with serving(predictor) as (_, port):
        for target in (b"/\x1b[31mred", b"/%1b[31mred", b"/api/info?\x07bell"):
            response, _, _ = raw(port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status_of(response) in (400, 404, 200)
    assert "\x1b" not in caplog.text and "\x07" not in caplog.text


GARBAGE = [
    b"\x00\x01\x02\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://elsewhere.example/ HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000
    + b"\r\n\r\n", b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST /api/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=\"\"\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    b"GET /gallery/0/photo?token=%ff%fe HTTP/1.1\r\nHost: x\r\nCookie: phi3v_token=\"\xff;\r\n\r\n",
]


def test_nothing_a_client_sends_is_a_500(predictor):
    with serving(predictor, body_timeout_s=1, header_timeout_s=0.5) as (_, port):  # 0.5: kept-alive ones close
        for data in GARBAGE:
            response, _, _ = raw(port, data, wait=1 + SLACK_S)
            assert status_of(response) in (0, 200, 400, 404, 405, 408, 413, 431), (data[:60], response[:200])
            assert answers(port)


def test_connections_beyond_the_limit_get_503(predictor):
    with serving(predictor, max_connections=2, header_timeout_s=30) as (_, port):
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            time.sleep(0.3)
            response, _, _ = raw(port, head("GET", "/api/info", Connection="close"))
            assert status_of(response) == 503
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.3)
        assert answers(port)


@pytest.fixture
def held_generation(predictor, monkeypatch):
    """generate() waits until the test sets the event; how many generations have started."""
    release, started, finished = threading.Event(), [], []
    original = predictor.generate

    def held(inputs):
        started.append(time.monotonic())
        release.wait(60)
        try:
            return original(inputs)
        finally:
            finished.append(time.monotonic())

    monkeypatch.setattr(predictor, "generate", held)
    yield release, started
    release.set()  # (a failed test left them waiting:) torch must not be running when the interpreter exits
    wait_until(lambda: len(finished) == len(started), 60)


def post_in_background(port: int, count: int, photo: bytes = PHOTO) -> tuple[list, list[threading.Thread]]:
    results: list = []

    def send() -> None:
        status, headers, body = request(port, "POST", "/api/predict", photo)
        results.append((status, headers, json.loads(body)))

    threads = [threading.Thread(target=send) for _ in range(count)]
    for thread in threads:
        thread.start()
    return results, threads


def wait_until(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_photos_beyond_the_queue_get_503_with_retry_after(predictor, held_generation):
    release, started = held_generation
    with serving(predictor, max_queue=2) as (state, port):
        results, threads = post_in_background(port, 2)
        wait_until(lambda: len(started) == 1 and state.workload.in_flight == 2)  # one generating, one waiting
        status, headers, body = request(port, "POST", "/api/predict", PHOTO)
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert json.loads(body)["error"] == (f"The demo is busy: 2 photos are ahead of yours (the limit is 2). Try "
                                             f"again in about {headers['retry-after']} s.")
        assert answers(port)  # the rest of the site still answers
        release.set()
        for thread in threads:
            thread.join(60)
        assert [status for status, _, _ in results] == [200, 200] and state.workload.in_flight == 0


def test_a_shutdown_answers_waiting_photos_503_and_finishes_the_running_one(predictor, held_generation):
    release, started = held_generation
    with serving(predictor, drain_timeout_s=10) as (state, port):
        results, threads = post_in_background(port, 4)
        wait_until(lambda: len(started) == 1 and state.workload.in_flight == 4)
    # (the `with` has asked the server to stop; it waits for the running generation)
        threading.Timer(1.0, release.set).start()
    for thread in threads:
        thread.join(60)
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 503, 503, 503]
    for status, headers, body in results:
        if status == 503:
            assert body == {"error": "The demo is shutting down. Try again in a minute."}
            assert headers["retry-after"] == "60"


def tracked_decoding(predictor: Predictor, monkeypatch) -> tuple[list[int], dict[int, list[float]]]:
    """Makes each `predictor.prepare` hold its request's pixels for 0.4 s while it decodes. Returns the pixels
    decoding together as each starts, and per request pixel count when its calls finished (monotonic)."""
    active, peaks, finished, lock = [0], [], {}, threading.Lock()
    original = predictor.prepare

    def tracked(data: bytes):
        pixels = predictor.pixels(data)
        with lock:
            active[0] += pixels
            peaks.append(active[0])
        time.sleep(0.4)
        try:
            return original(data)
        finally:
            with lock:
                active[0] -= pixels
                finished.setdefault(pixels, []).append(time.monotonic())

    monkeypatch.setattr(predictor, "prepare", tracked)
    return peaks, finished


def test_decoding_holds_the_photos_pixels_of_a_shared_budget(predictor, monkeypatch):
    """Four 1 MP photos and a small one at once, with a budget of two 1 MP photos and a bit: at most two
    big ones decode together, and the small one passes them."""
    big, small = encoded(Image.new("RGB", (1000, 1000), "gray")), encoded(Image.new("RGB", (100, 100), "red"))
    narrow = Predictor(predictor.model, predictor.processor, predictor.task, predictor.source, 2,
                       max_pixels=1_000_000)
    peaks, finished = tracked_decoding(narrow, monkeypatch)
    with serving(narrow, decode_pixels=2_010_000) as (_, port):
        results, threads = post_in_background(port, 4, big)
        time.sleep(0.2)
        small_status = request(port, "POST", "/api/predict", small)[0]
        for thread in threads:
            thread.join(120)
    assert small_status == 200 and [status for status, _, _ in results] == [200] * 4
    assert max(peaks) == 2_010_000  # two big ones and the small one, never three big ones
    assert finished[10_000][0] < sorted(finished[1_000_000])[2]  # it did not wait for the third big one


def test_off_loopback_every_request_needs_the_token(predictor):
    token = "s3cret-token"
    with serving(predictor, token=token) as (_, port):
        for method, path in (("GET", "/"), ("GET", "/api/info"), ("GET", "/api/gallery"), ("POST", "/api/predict"),
                             ("GET", "/gallery/0/photo"), ("GET", "/?token=wrong-token")):
            status, headers, body = request(port, method, path, PHOTO if method == "POST" else None)
            assert status == 401 and headers["www-authenticate"] == "Bearer"
            assert json.loads(body)["error"].startswith("This demo needs its access token: open the link the server")
        assert request(port, "GET", "/favicon.svg")[0] == 200  # nothing to protect
        status, headers, _ = request(port, "GET", f"/?token={token}&lang=en")
        assert status == 303 and headers["location"] == "/?lang=en"
        cookie = headers["set-cookie"].split(";")[0]
        assert cookie == f"phi3v_token={token}" and "HttpOnly" in headers["set-cookie"]
        assert "samesite=strict" in headers["set-cookie"].lower()
        assert request(port, "GET", "/api/info", headers={"Cookie": cookie})[0] == 200
        assert request(port, "POST", "/api/predict", PHOTO, {"Cookie": cookie})[0] == 200
        assert request(port, "GET", "/api/info", headers={"Authorization": f"Bearer {token}"})[0] == 200
        assert request(port, "GET", "/api/info", headers={"Authorization": "Bearer s3cret-tokeN"})[0] == 401
        assert request(port, "GET", "/api/info", headers={"Cookie": "phi3v_token=s3cret"})[0] == 401


def test_info_names_the_model_the_app_chose_to_show(predictor):
    with serving(predictor, model_name="run/adapter") as (_, port):
        assert json.loads(request(port, "GET", "/api/info")[2])["model"] == "run/adapter"


def run_capacity(scenario) -> list:
    events: list = []
    asyncio.run(scenario(events))
    return events


def test_capacity_serves_in_order_lets_a_fitting_waiter_pass_and_closes():
    async def scenario(events):
        capacity = Capacity(10)
        await capacity.acquire(8)

        async def user(name: str, amount: int) -> None:
            try:
                async with capacity.holding(amount):
                    events.append(f"{name} in ({capacity.free} free)")
                    await asyncio.sleep(0.01)
            except Closed:
                events.append(f"{name} closed")

        tasks = [asyncio.create_task(user("big", 9)), asyncio.create_task(user("small", 2))]
        await asyncio.sleep(0.01)
        events.append("release 8")
        capacity.release(8)
        await asyncio.gather(*tasks)
        await capacity.acquire(10)
        waiting = asyncio.create_task(user("late", 1))
        await asyncio.sleep(0.01)
        capacity.close()
        await waiting
        with pytest.raises(Closed):
            await capacity.acquire(1)
        with pytest.raises(ValueError, match="asked for 11 of a capacity of 10"):
            await capacity.acquire(11)

    assert run_capacity(scenario) == ["small in (0 free)", "release 8", "big in (1 free)", "late closed"]


def test_capacity_gives_back_what_a_cancelled_waiter_held_or_was_granted():
    async def scenario(events):
        capacity = Capacity(4)
        await capacity.acquire(4)
        waiter = asyncio.create_task(capacity.acquire(3))
        await asyncio.sleep(0.01)
        waiter.cancel()  # still waiting: it leaves the queue
        await asyncio.gather(waiter, return_exceptions=True)
        events.append(capacity.free)
        granted = asyncio.create_task(capacity.acquire(3))
        await asyncio.sleep(0.01)
        capacity.release(4)  # grants it 3...
        granted.cancel()  # ... but it is cancelled before it runs: the 3 come back
        await asyncio.gather(granted, return_exceptions=True)
        events.append(capacity.free)

    assert run_capacity(scenario) == [0, 4]


def test_a_two_photo_request_holds_both_photos_pixels_of_the_budget(predictor, monkeypatch):
    """Two 1 MP photos of one product in one form and a 1 MP photo alone, with a budget of two 1 MP photos
    and a bit: the form holds 2 MP while it decodes, so the lone photo waits for it, never decoding beside it."""
    one_mp = encoded(Image.new("RGB", (1000, 1000), "gray"))
    narrow = Predictor(predictor.model, predictor.processor, predictor.task, predictor.source, 2,
                       max_pixels=2_000_000)
    peaks, finished = tracked_decoding(narrow, monkeypatch)
    body, headers = multipart([("photo", "front.png", one_mp), ("photo", "back.png", one_mp)])
    with serving(narrow, decode_pixels=2_010_000) as (_, port):
        results = []
        form = threading.Thread(target=lambda: results.append(request(port, "POST", "/api/predict", body, headers)))
        form.start()
        wait_until(lambda: peaks)
        single = request(port, "POST", "/api/predict", one_mp)
        form.join(120)
    assert results[0][0] == 200 and single[0] == 200
    assert peaks == [2_000_000, 1_000_000]  # never 3 MP at once
    assert finished[2_000_000][0] < finished[1_000_000][0]
