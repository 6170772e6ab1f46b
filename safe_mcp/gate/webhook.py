"""Posting a JSON notification to the operator's webhook (Slack incoming-webhook compatible), with retries."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any

__all__ = ["post", "post_in_background"]

log = logging.getLogger("safe_mcp")


def post(url: str, body: dict[str, Any], retries: int, what: str) -> bool:
    """POST `body` as JSON; retry with backoff. True when delivered. Never raises: a failed
    notification must never change a decision."""
    data = json.dumps(body, default=str).encode()
    for attempt in range(retries + 1):
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},  # noqa: S310
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - http(s) only, checked at config load
                if 200 <= resp.status < 300:
                    return True
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("webhook (%s) attempt %d failed: %s", what, attempt + 1, exc)
        time.sleep(min(0.2 * 2**attempt, 5))
    log.error("webhook (%s) gave up after %d attempts", what, retries + 1)
    return False


def post_in_background(url: str, body: dict[str, Any], retries: int, what: str) -> threading.Thread:
    t = threading.Thread(target=post, args=(url, body, retries, what), name="safe-mcp-notify", daemon=True)
    t.start()
    return t
