"""Hostile-client probes of the web demo (issue 20): start `python -m phi3v.app`, attack it as a
user and an attacker would, print one table row per probe (status, time, server still answering).

Run (Linux: reads /proc for the server's memory and threads):

  python benchmarks/app_probes.py --out probes.md -- adapter=<run>/adapter
  python benchmarks/app_probes.py --repo <other checkout> -- preset=tiny   # an older version of the code

Everything after `--` goes to the app (`host=127.0.0.1 port=0` are added). The heaviest probe sends
12 photos of 39.9 megapixels at once (5 KB PNGs, just under the default `max_pixels`) while a small
photo is sent: it needs a few GB of free memory on the old server. Figures depend on the machine's
load: compare runs made on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BIG = (7000, 5700)  # 39.9 MP, under the default max_pixels of 40 MP
BOMB = (15000, 12000)  # 180 MP: over Pillow's own hard limit (2 x 89.5 MP) as well
SLOW_HEADERS = 300


@dataclass
class Row:
    probe: str
    result: str
    seconds: float
    answering: str


def encoded(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class Target:
    """The app as a subprocess: its URL, its log, its memory."""

    def __init__(self, repo: Path, app_args: list[str], log: Path):
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
        self.log_path = log
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "phi3v.app", "host=127.0.0.1", "port=0", *app_args], cwd=repo, env=environment,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.log.write(line.decode(errors="replace"))
            if b" on http://" in line:
                self.port = int(re.search(rb"http://[^:]+:(\d+)", line).group(1))
                threading.Thread(target=self._copy_log, daemon=True).start()
                return
        raise SystemExit(f"the app did not start; see {log}")

    def _copy_log(self) -> None:
        for line in self.process.stdout:
            self.log.write(line.decode(errors="backslashreplace"))  # keeps raw control bytes visible
            self.log.flush()

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def status(self, key: str) -> int:
        """A field of /proc/<pid>/status, in kB for memory (VmRSS, VmHWM) or a count (Threads)."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"^{key}:\s+(\d+)", text, re.M).group(1))

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 60) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def raw(self, data: bytes, wait: float) -> tuple[bytes, float]:
        """Send bytes as they are; what comes back within `wait` seconds (or until the server closes)."""
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=wait) as sock:
            sock.sendall(data)
            received = b""
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except (TimeoutError, ConnectionResetError):
                pass
        return received, time.monotonic() - start

    def answering(self) -> str:
        try:
            start = time.monotonic()
            status, _ = self.request("GET", "/api/info", timeout=10)
            return f"yes ({time.monotonic() - start:.2f} s)" if status == 200 else f"no ({status})"
        except OSError as error:
            return f"no ({type(error).__name__})"


def status_line(response: bytes) -> str:
    if not response:
        return "no reply"
    first = response.split(b"\r\n", 1)[0].decode(errors="replace")
    body = response.split(b"\r\n\r\n", 1)[-1][:160].decode(errors="replace")
    return f"{first.removeprefix('HTTP/1.1 ').removeprefix('HTTP/1.0 ')}: {body}"


def short(body: bytes) -> str:
    return body[:180].decode(errors="replace").replace("\n", " ")


def probe_paths(target: Target, rows: list[Row]) -> None:
    for path in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd", "/gallery/-1/photo",
                 "/gallery/99999999999999999999/photo", "/gallery/0/../../../etc/passwd"):
        start = time.monotonic()
        response, _ = target.raw(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), 10)
        rows.append(Row(f"GET {path}", status_line(response)[:40], time.monotonic() - start, target.answering()))
    for path in ("/favicon.ico", "/api/info"):
        start = time.monotonic()
        status, body = target.request("GET", path)
        rows.append(Row(f"GET {path}", f"{status} {short(body)}", time.monotonic() - start, target.answering()))


def probe_words(target: Target, rows: list[Row]) -> None:
    for name, body in (("POST text", b"hello, I am text\n"), ("POST 0 bytes", b""),
                       ("POST 180 MP bomb", encoded(Image.new("1", BOMB)))):
        start = time.monotonic()
        status, answer = target.request("POST", "/api/predict", body)
        rows.append(Row(name, f"{status} {short(answer)}", time.monotonic() - start, target.answering()))
    photo = encoded(Image.new("RGB", (64, 48), "navy"))
    boundary = "----probe"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    start = time.monotonic()
    status, answer = target.request("POST", "/api/predict", form,
                                    {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    rows.append(Row("POST multipart (curl -F)", f"{status} {short(answer)}", time.monotonic() - start,
                    target.answering()))


def probe_protocol(target: Target, rows: list[Row]) -> None:
    for name, value in (("UTF-8", "²".encode()), ("Latin-1", "²".encode("latin-1"))):
        response, seconds = target.raw(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + value
                                       + b"\r\n\r\nabc", 10)
        rows.append(Row(f"Content-Length: ² ({name})", status_line(response)[:90], seconds, target.answering()))
    response, seconds = target.raw(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\nabc", 40)
    rows.append(Row("Content-Length 10 MB, 3-byte body (waits 40 s)", status_line(response)[:90], seconds,
                    target.answering()))
    before = target.log_text().count("Traceback")
    photo = encoded(Image.new("RGB", (64, 48), "red"))
    for _ in range(5):  # the client leaves before the answer is written
        with socket.create_connection(("127.0.0.1", target.port)) as sock:
            sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(photo) + photo)
    time.sleep(3)
    tracebacks = target.log_text().count("Traceback") - before
    rows.append(Row("5 clients leave before the answer", f"{tracebacks} tracebacks in the log", 3.0,
                    target.answering()))
    target.raw(b"GET /\x1b[31mred\x1b[0m HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 5)
    time.sleep(0.5)
    raw = "\x1b[31m" in target.log_text()
    rows.append(Row("control characters in the path", "reach the log raw" if raw else "not raw in the log", 0.0,
                    target.answering()))


def probe_slow_headers(target: Target, rows: list[Row]) -> None:
    start, sockets = time.monotonic(), []
    for _ in range(SLOW_HEADERS):
        sock = socket.create_connection(("127.0.0.1", target.port), timeout=30)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        sockets.append(sock)
    time.sleep(1)
    threads = target.status("Threads")
    answering = target.answering()
    time.sleep(15)
    closed = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            closed += sock.recv(1024) == b""
        except BlockingIOError:
            pass
        except ConnectionResetError:
            closed += 1
        sock.close()
    rows.append(Row(f"{SLOW_HEADERS} slow-header connections",
                    f"{threads} server threads; {closed} closed by the server within 16 s",
                    time.monotonic() - start, answering))


def probe_big_uploads(target: Target, rows: list[Row], count: int = 12) -> None:
    big = encoded(Image.new("RGB", BIG, "gray"))
    small = encoded(Image.new("RGB", (240, 180), "navy"))
    baseline = target.status("VmRSS")
    target.reset_peak()
    results: list[int] = []

    def send() -> None:
        try:
            results.append(target.request("POST", "/api/predict", big, timeout=300)[0])
        except OSError:
            results.append(0)

    start = time.monotonic()
    senders = [threading.Thread(target=send) for _ in range(count)]
    for sender in senders:
        sender.start()
    time.sleep(0.5)
    small_start = time.monotonic()
    small_status, _ = target.request("POST", "/api/predict", small, timeout=300)
    small_seconds = time.monotonic() - small_start
    for sender in senders:
        sender.join()
    seconds = time.monotonic() - start
    peak, after = target.status("VmHWM"), target.status("VmRSS")
    statuses = ", ".join(f"{results.count(s)}x{s}" for s in sorted(set(results)))
    rows.append(Row(f"{count} concurrent {BIG[0] * BIG[1] / 1e6:.1f} MP uploads ({len(big) // 1000} KB each)",
                    f"{statuses}; RSS {baseline / 1e3:.0f} MB before, peak {peak / 1e3:.0f} MB "
                    f"(+{(peak - baseline) / 1e3:.0f}), {after / 1e3:.0f} MB after", seconds, target.answering()))
    rows.append(Row("a 240x180 upload sent 0.5 s into that", str(small_status), small_seconds, target.answering()))


def probe_parallel(target: Target, rows: list[Row], count: int) -> None:
    photos = [encoded(Image.new("RGB", (240, 180), color)) for color in ("navy", "red", "green", "gray")]
    results: list[int] = []

    def send(i: int) -> None:
        try:
            status, _ = target.request("POST", "/api/predict", photos[i % len(photos)], timeout=300)
            results.append(status)
        except OSError:
            results.append(0)

    start = time.monotonic()
    senders = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    statuses = ", ".join(f"{results.count(s)}x{s}" for s in sorted(set(results)))
    rows.append(Row(f"{count} parallel small uploads", statuses, time.monotonic() - start, target.answering()))


def probe_hundred(target: Target, rows: list[Row], count: int = 100) -> None:
    photos = [encoded(Image.new("RGB", (240, 180), color)) for color in ("navy", "red", "green", "gray")]
    before, start = target.status("VmRSS"), time.monotonic()
    statuses = [target.request("POST", "/api/predict", photos[i % len(photos)])[0] for i in range(count)]
    after = target.status("VmRSS")
    counted = ", ".join(f"{statuses.count(s)}x{s}" for s in sorted(set(statuses)))
    rows.append(Row(f"{count} normal uploads one after another", f"{counted}; RSS {before / 1e3:.0f} -> "
                    f"{after / 1e3:.0f} MB", time.monotonic() - start, target.answering()))


def probe_sigterm(target: Target, rows: list[Row], count: int = 6) -> None:
    photo = encoded(Image.new("RGB", (240, 180), "navy"))
    results: list[str] = []

    def send() -> None:
        try:
            results.append(str(target.request("POST", "/api/predict", photo, timeout=60)[0]))
        except OSError as error:
            results.append(type(error).__name__)

    senders = [threading.Thread(target=send) for _ in range(count)]
    for sender in senders:
        sender.start()
    time.sleep(0.3)
    start = time.monotonic()
    target.process.send_signal(signal.SIGTERM)
    code = target.process.wait(60)
    seconds = time.monotonic() - start
    for sender in senders:
        sender.join()
    answers = ", ".join(f"{results.count(s)}x{s}" for s in sorted(set(results)))
    rows.append(Row(f"SIGTERM with {count} uploads in flight", f"exit {code}; answers: {answers}", seconds, "-"))


GROUPS = {
    "paths": probe_paths, "words": probe_words, "protocol": probe_protocol,
    "parallel": lambda target, rows: (probe_parallel(target, rows, 8), probe_parallel(target, rows, 40)),
    "hundred": probe_hundred, "big": probe_big_uploads, "slow_headers": probe_slow_headers, "sigterm": probe_sigterm,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose phi3v.app is probed")
    parser.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    parser.add_argument("--log", type=Path, default=Path("app_probes.log"), help="the app's console output")
    parser.add_argument("--only", help=f"comma-separated groups, in this order: {', '.join(GROUPS)}")
    parser.add_argument("app_args", nargs="*", help="app overrides (after --)")
    arguments = parser.parse_args()
    chosen = arguments.only.split(",") if arguments.only else list(GROUPS)
    unknown = set(chosen) - set(GROUPS)
    if unknown:
        parser.error(f"--only: no group {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)}")
    target, rows = Target(arguments.repo.resolve(), arguments.app_args, arguments.log), []
    try:
        for name in GROUPS:  # the order matters: memory is measured before the slow-header flood, SIGTERM ends it
            if name in chosen:
                GROUPS[name](target, rows)
    finally:
        if target.process.poll() is None:
            target.process.kill()
    table = ["| probe | result | time (s) | server still answering |", "|---|---|---|---|"]
    table += [f"| {r.probe} | {r.result.replace('|', '/')} | {r.seconds:.2f} | {r.answering} |" for r in rows]
    print("\n".join(table))
    if arguments.out:
        arguments.out.write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
