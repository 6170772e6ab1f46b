"""Sending one request to the target's origin: fixed host, capped response, no redirect to elsewhere.

httpx is imported on first use. Every httpx error is mapped here, once, to `TargetUnavailable` or
`AdapterError`; the text never holds a header value.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from pydantic import BaseModel, ConfigDict

from safe_mcp.errors import AdapterError, TargetUnavailable

__all__ = ["Response", "Sender", "Unanswered"]

_MAX_REDIRECTS = 3


class Unanswered(TargetUnavailable):
    """The request may have reached the API, but no answer came back (timeout, connection lost)."""


class Response(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: int
    url: str
    body: Any = None
    """The JSON document, or the text when the body is not JSON, or None when empty."""
    truncated: bool = False
    headers: dict[str, str] = {}

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Sender:
    """One httpx client per target; `send` is the only way out."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *, timeout_s: float, connect_timeout_s: float,
                 max_bytes: int, retries: int, verify: bool) -> None:
        parts = urlsplit(base_url)
        self.origin = (parts.scheme, (parts.hostname or "").lower(), parts.port)
        self.base = base_url.rstrip("/")
        self.base_path = parts.path.rstrip("/")
        self._headers = dict(headers)
        self._timeout = (timeout_s, connect_timeout_s)
        self._max = max_bytes
        self._retries = retries
        self._verify = verify
        self._lock = threading.Lock()
        self._client: Any = None

    def url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        """The full URL of `path` under base_url (the path is already a filled template)."""
        url = self.base + path
        if query:
            url += "?" + urlencode({k: _query_value(v) for k, v in query.items()})
        self._check_origin(url)
        return url

    def _check_origin(self, url: str) -> None:
        parts = urlsplit(url)
        if (parts.scheme, (parts.hostname or "").lower(), parts.port) != self.origin:
            raise AdapterError(f"{url.split('?')[0]} is not on the target's origin; safe-mcp never changes host")
        segments = parts.path.split("/")
        if ".." in segments or "." in segments or not (parts.path + "/").startswith(self.base_path + "/"):
            raise AdapterError("the path leaves the target's base_url; nothing was sent")

    def _http(self) -> Any:
        with self._lock:
            if self._client is None:
                import httpx

                self._client = httpx.Client(
                    timeout=httpx.Timeout(self._timeout[0], connect=self._timeout[1]), follow_redirects=False,
                    trust_env=False, verify=self._verify, headers={"User-Agent": "safe-mcp"})
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def send(self, method: str, url: str, *, body: Any = None, extra: Mapping[str, str] | None = None,
             resend: bool = False, max_bytes: int | None = None) -> Response:
        """Send once (or, with `resend`, again after a timeout with the same headers), follow same-origin
        redirects of reads only, and read at most max_response_bytes.

        Raises:
            Unanswered: no answer (timeout, connection lost): a write may or may not have happened.
            TargetUnavailable: the API could not be reached at all; nothing was sent.
            AdapterError: a redirect to another origin, or of a write.
        """
        import httpx

        headers = {**self._headers, **(extra or {})}
        content = None
        if body is not None:
            content = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        attempts = 1 + (self._retries if resend else 0)
        for attempt in range(attempts):
            try:
                response = self._once(method, url, headers, content, min(max_bytes or self._max, self._max))
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # This attempt never connected; only an earlier attempt that did may have reached the API.
                if attempt == 0:
                    raise TargetUnavailable(f"cannot connect to {self.base} ({type(exc).__name__}); nothing was sent",
                                            "check that the API is up and base_url is right, then retry") from None
                raise Unanswered(f"no answer from {self.base} after {attempt} attempt(s), then it could not be "
                                 "reached; the first request may have reached the API", "") from None
            except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if attempt + 1 < attempts:
                    continue
                raise Unanswered(f"no answer from {self.base} ({type(exc).__name__}) after {attempt + 1} attempt(s); "
                                 "the request may have reached the API",
                                 "") from None
            except httpx.HTTPError as exc:
                raise AdapterError(f"{method} {url.split('?')[0]} failed: {type(exc).__name__}") from None
            return response
        raise AssertionError("unreachable")

    def _once(self, method: str, url: str, headers: dict[str, str], content: bytes | None, cap: int) -> Response:
        import httpx

        deadline = time.monotonic() + self._timeout[0]
        for _ in range(_MAX_REDIRECTS + 1):
            with self._http().stream(method, url, headers=headers, content=content) as r:
                if r.is_redirect:
                    target = str(r.url.join(r.headers.get("location", "")))
                    if method not in {"GET", "HEAD"}:
                        raise AdapterError(f"the API answered {method} with a redirect ({r.status_code}); safe-mcp "
                                           "does not follow redirects of writes: check on the API whether it ran")
                    try:
                        self._check_origin(target)
                    except AdapterError:
                        raise AdapterError(f"the API redirected to {urlsplit(target).netloc or target!r}, another "
                                           "origin; not followed (redirects stay on the target's host)") from None
                    url = target
                    continue
                raw, truncated = bytearray(), False
                for chunk in r.iter_bytes():
                    # httpx's read timeout is per chunk; a server trickling bytes must not hold a call forever.
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("the whole response took longer than timeout_s")
                    raw += chunk
                    if len(raw) > cap:
                        del raw[cap:]
                        truncated = True
                        break
                return Response(status=r.status_code, url=str(r.url), body=_decode(bytes(raw), truncated),
                                truncated=truncated,
                                headers={k: v for k, v in r.headers.items() if k.lower() in _KEPT_HEADERS})
        raise AdapterError(f"more than {_MAX_REDIRECTS} redirects; not followed")


_KEPT_HEADERS = frozenset({"content-type", "location", "etag", "idempotency-key", "idempotent-replayed",
                           "retry-after", "x-request-id"})


def _decode(raw: bytes, truncated: bool) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", "replace")
    if truncated:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise AdapterError(f"query values must be strings or numbers, not {type(value).__name__}")
