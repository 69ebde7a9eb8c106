"""Tier 3: `python -m phi3v.prepare` from the command line, synthetic and URL catalogues.

The URL catalogue is a local CSV whose image URLs point at an HTTP server on 127.0.0.1 started here.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


def png(color: str, size=(80, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


ROUTES = {"/a": (200, png("red")), "/b": (200, png("blue", (60, 90))), "/html": (200, b"<html>hi</html>")}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        status, body = ROUTES.get(self.path, (404, b"missing"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def run_prepare(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "phi3v.prepare", "progress=false", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_prepare_synthetic_from_the_command_line(tmp_path):
    result = run_prepare("data=sample", "data.synthetic.num_products=40", f"data.data_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "synthetic: 40 rows -> kept 40, dropped 0" in result.stdout
    assert pq.read_table(tmp_path / "manifest.parquet").num_rows == 40


@pytest.mark.slow
def test_prepare_burberry_schema_csv_with_local_urls(tmp_path, server):
    table = tmp_path / "catalogue.csv"
    rows = [
        ("1", "Check Scarf", "SCARVES", "490.00", f"{server}/a"),
        ("2", "Tote", "BAGS", "1,250.00", f"{server}/b"),
        ("3", "Gone", "BAGS", "300", f"{server}/missing"),
        ("4", "Page", "BAGS", "300", f"{server}/html"),
        ("5", "No price", "BAGS", "N.A.", f"{server}/a"),
        ("6", "Local file", "BAGS", "100", "file:///etc/passwd"),
    ]
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["product_code", "title", "category3_code", "full_price", "imageurl"])
        writer.writerows(rows)
    out = tmp_path / "data"
    result = run_prepare("data=burberry", f"data.source={table}", f"data.data_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout
    assert "6 rows -> kept 2, dropped 4" in lines
    for reason in ("bad_price: 1", "http_404: 1", "not_an_image: 1", "bad_url: 1"):
        assert f"dropped {reason}" in lines, lines
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [(r["product_id"], r["price"], r["image_widths"], r["image_heights"]) for r in manifest] == [
        ("1", 490.0, [80], [60]), ("2", 1250.0, [60], [90])
    ]
    again = run_prepare("data=burberry", f"data.source={table}", f"data.data_dir={out}")
    assert "images downloaded 0, reused 2" in again.stdout


def test_importing_the_commands_changes_nothing():
    """No import-time side effects: importing train, predict, prepare, export, app or the launch helpers registers
    no config schema or resolver and fixes no start time; running a command (`cli.start`) does."""
    code = (
        "import train, phi3v.predict, phi3v.prepare, phi3v.export, phi3v.app, phi3v.training.launch as launch\n"
        "from hydra.core.config_store import ConfigStore\n"
        "from omegaconf import OmegaConf\n"
        "print(sorted(ConfigStore.instance().repo), OmegaConf.has_resolver('launch_time'),"
        " launch.process_start.cache_info().currsize)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "['_dummy_empty_config_.yaml', 'hydra'] False 0"
