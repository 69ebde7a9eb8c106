"""Who may use the demo: loopback by default; off loopback, an optional access token.

`host=127.0.0.1` (the default) lets only this machine in. Any other host opens the demo to the
network: the start-up lines say so, and `token=` (or the PHI3V_APP_TOKEN environment variable) makes
every request but the favicon carry it, as `Authorization: Bearer <token>` or as the cookie that the
printed link `http://host:port/?token=<token>` sets (the page then works as usual). The token is
compared in constant time. This is a shared password for a demo, not user accounts: put the demo
behind a reverse proxy with TLS where the network is not trusted (the token travels in clear).
"""

from __future__ import annotations

import ipaddress
import secrets
from http import HTTPStatus
from urllib.parse import urlencode

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse

TOKEN_ENV = "PHI3V_APP_TOKEN"
COOKIE = "phi3v_token"
OPEN_PATHS = ("/favicon.ico", "/favicon.svg")  # nothing to protect; browsers ask for them without cookies


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def start_lines(source: str, host: str, port: int, token: str | None) -> list[str]:
    """What the app prints once it listens: the URL (with the token, which the page needs) and, off
    loopback, whom that lets in."""
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}" + (f"/?token={token}" if token else "")
    lines = [f"phi3v demo of {source} on {url}  (Ctrl-C stops it)"]
    if not is_loopback(host):
        if token:
            lines.append(f"host={host}: open to the network; requests need the token (the link above sets it).")
        else:
            lines.append(f"warning: host={host} opens the demo to the network WITHOUT a password: anyone who can "
                         f"reach port {port} can use it. Set token=<secret> (or {TOKEN_ENV}) to require one.")
    return lines


class TokenGate:
    """ASGI middleware: requests without the token get 401; `GET <path>?token=<token>` sets the cookie
    and redirects to the same path without it (the token does not stay in the address bar)."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        request = HTTPConnection(scope)
        if self._matches(request.cookies.get(COOKIE)) or self._matches(_bearer(request.headers.get("authorization"))):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET" and self._matches(request.query_params.get("token")):
            rest = urlencode([(key, value) for key, value in request.query_params.multi_items() if key != "token"])
            response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), HTTPStatus.SEE_OTHER)
            response.set_cookie(COOKIE, self.token.decode(), httponly=True, samesite="strict")
        else:
            message = ("This demo needs its access token: open the link the server printed (it ends in "
                       "?token=...), or send the header 'Authorization: Bearer <token>'.")
            response = JSONResponse({"error": message}, HTTPStatus.UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def _matches(self, given: str | None) -> bool:
        return given is not None and secrets.compare_digest(given.encode(), self.token)


def _bearer(header: str | None) -> str | None:
    if header is None or not header.lower().startswith("bearer "):
        return None
    return header[7:].strip()
