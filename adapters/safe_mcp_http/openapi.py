"""Reading an OpenAPI 3 JSON document: a file beside the config, or a URL on an allowed host."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from safe_mcp.errors import AdapterError, TargetUnavailable
from safe_mcp_http.operations import from_openapi

if TYPE_CHECKING:
    from safe_mcp_http.client import Sender

__all__ = ["load_document"]

_FIX = "point openapi at an OpenAPI 3 JSON document (a file beside the config, or a URL on an allowed host)"


def load_document(source: str, *, base_dir: str, sender: Sender,
                  allowed_hosts: tuple[str, ...] | None) -> dict[str, dict[str, Any]]:
    """The operations of the document at `source`, by operationId.

    Raises:
        TargetUnavailable: unreadable, not JSON, not OpenAPI 3, or on a host the target may not reach.
    """
    try:
        if source.startswith(("http://", "https://")):
            text = _fetch(source, sender, allowed_hosts)
        else:
            path = Path(source)
            text = (path if path.is_absolute() else Path(base_dir, path)).read_text(encoding="utf-8")
        return from_openapi(json.loads(text))
    except OSError as exc:
        raise TargetUnavailable(f"cannot read the OpenAPI document {source}: {exc.strerror or exc}", _FIX) from None
    except ValueError as exc:
        raise TargetUnavailable(f"the OpenAPI document {source} is not usable: {exc}", _FIX) from None


def _fetch(url: str, sender: Sender, allowed_hosts: tuple[str, ...] | None) -> str:
    host = (urlsplit(url).hostname or "").lower()
    patterns = allowed_hosts if allowed_hosts is not None else (sender.origin[1],)
    if not any(fnmatch.fnmatchcase(host, p.lower()) for p in patterns):
        raise TargetUnavailable(f"the OpenAPI document is on {host!r}, which the target may not reach",
                                "add the host to allowed_hosts, or keep the document beside the config")
    try:
        # The target's secret headers go only to its own origin.
        same = sender.url(urlsplit(url).path or "/") if url.startswith(sender.base) else None
    except AdapterError:
        same = None
    resp = sender.send("GET", same, resend=True) if same else _plain_get(url, sender)
    if not resp.ok or not isinstance(resp.body, dict):
        raise TargetUnavailable(f"GET {url} answered {resp.status} without a JSON document", _FIX)
    return json.dumps(resp.body)


def _plain_get(url: str, sender: Sender) -> Any:
    from safe_mcp_http.client import Sender as _Sender

    other = _Sender(url, {}, timeout_s=sender._timeout[0], connect_timeout_s=sender._timeout[1], max_bytes=sender._max,
                    retries=1, verify=sender._verify)
    try:
        return other.send("GET", url, resend=True)
    finally:
        other.close()
