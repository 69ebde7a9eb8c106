"""Which chromium the browser test drives (tests/test_app_browser.py), and getting one.

The first that exists wins:
  1. PHI3V_CHROMIUM=<binary>: that one, and only that one (set but missing: no browser, said so);
  2. `chromium`, `chromium-browser`, `google-chrome`, `google-chrome-stable` on PATH (Debian/Ubuntu's
     packages, a Chrome install);
  3. Playwright's own download (`python -m playwright install chromium`, user-level, in
     ~/.cache/ms-playwright or $PLAYWRIGHT_BROWSERS_PATH).
With none, the test is skipped with a reason naming the ways to get one, which pytest's summary line
shows; with PHI3V_REQUIRE_BROWSER=1 (.ci/run sets it) it fails instead: CI never skips it.

`python tests/browser.py --install` (run once by `make test`, again by `make browser`): when no
browser is found, try Playwright's download, bounded by INSTALL_TIMEOUT_S. It never asks for root: a
test command should not install system packages (`.ci/run`, as root, installs Debian's chromium).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ENV_BINARY = "PHI3V_CHROMIUM"
ENV_REQUIRE = "PHI3V_REQUIRE_BROWSER"
ON_PATH = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_TIMEOUT_S = 600  # the download is ~170 MB; where it is blocked it fails in seconds
HOW_TO_GET_ONE = ("get one with `make browser` (Playwright's download; needs the internet), "
                  "`sudo apt-get install chromium` (Debian/Ubuntu), or set PHI3V_CHROMIUM=<chromium binary>")


@dataclass(frozen=True)
class Found:
    """A browser binary and where it was found; or, `binary` None, why there is none."""

    binary: Path | None
    how: str


def find_chromium(environ: dict | None = None, playwright_binary=None) -> Found:
    """The chromium to drive, following the order above. `playwright_binary()` returns where
    Playwright's download is (or would be); by default Playwright is asked."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(ENV_BINARY)
    if chosen:
        path = Path(chosen)
        if path.is_file() and os.access(path, os.X_OK):
            return Found(path, f"{ENV_BINARY}={chosen}")
        return Found(None, f"{ENV_BINARY}={chosen} is not an executable file")
    for name in ON_PATH:
        found = shutil.which(name, path=environ.get("PATH", os.defpath))
        if found:
            return Found(Path(found), f"{name} on PATH")
    downloaded = (playwright_binary or playwright_chromium)()
    if downloaded is not None and downloaded.is_file():
        return Found(downloaded, "Playwright's download")
    return Found(None, f"{ENV_BINARY} is unset, no {', '.join(ON_PATH)} on PATH, and no Playwright download")


def playwright_chromium() -> Path | None:
    """Where Playwright keeps (or would keep) its chromium; None without the playwright package."""
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            return Path(playwright.chromium.executable_path)
    except Exception:  # no playwright package, or its driver does not start: no download to use either
        return None


def missing_reason(found: Found) -> str:
    return f"no chromium for the browser test ({found.how}): {HOW_TO_GET_ONE}"


def required(environ: dict | None = None) -> bool:
    return (os.environ if environ is None else environ).get(ENV_REQUIRE, "") not in ("", "0")


def install() -> int:
    """Playwright's download when no browser is found; 0 either way (`make test` goes on)."""
    found = find_chromium()
    if found.binary is not None:
        print(f"browser for tests/test_app_browser.py: {found.binary} ({found.how})")
        return 0
    print(f"browser: {found.how}; trying Playwright's download (python -m playwright install chromium) ...",
          flush=True)
    try:
        done = subprocess.run([sys.executable, "-m", "playwright", "install", "chromium"], timeout=INSTALL_TIMEOUT_S,
                              capture_output=True, text=True)
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        problem = None if done.returncode == 0 else said[0] if said else f"exit status {done.returncode}"
    except subprocess.TimeoutExpired:
        problem = f"no download after {INSTALL_TIMEOUT_S} s"
    found = find_chromium()
    if problem is None and found.binary is not None:
        print(f"browser: {found.binary} ({found.how})")
    else:
        print(f"browser: the download failed ({problem}); tests/test_app_browser.py will be skipped: {HOW_TO_GET_ONE}")
    return 0


if __name__ == "__main__":
    sys.exit(install() if sys.argv[1:] == ["--install"] else 0 if find_chromium().binary else 1)
