"""The approval page: pending `human` actions with previews, approved or denied with name + code.

Served at `/approvals` by `serve` (on the MCP port in HTTP mode, or on `--approvals-port` /
`[approvals] port` beside any transport). It accepts only the Host values it is bound to (plus
`[approvals] allowed_hosts`), requires a same-origin `Origin` on every POST, and checks a CSRF
token (HMAC of a per-browser cookie under a per-process key) on every decision. Everything
shown is HTML-escaped: previews carry data an agent chose.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from safe_mcp.errors import Refused, SafeMcpError

if TYPE_CHECKING:
    from safe_mcp.gate.pipeline import Gate

__all__ = ["ApprovalPage", "serve_in_thread"]

log = logging.getLogger("safe_mcp")
COOKIE = "safe_mcp_approvals"
_CSP = ("default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

_JS = """\
(function () {
  var list = document.getElementById('actions');
  function ids(el) { return el.getAttribute('data-ids') || ''; }
  async function refresh() {
    try {
      var r = await fetch('/approvals/list', {credentials: 'same-origin'});
      if (r.ok) {
        var text = await r.text();
        var tmp = document.createElement('div');
        tmp.innerHTML = text;
        var fresh = tmp.firstElementChild;
        if (fresh && ids(fresh) !== ids(list)) { list.replaceWith(fresh); list = fresh; }
      }
    } catch (e) { /* the server may be restarting; try again */ }
    setTimeout(refresh, 1000);
  }
  setTimeout(refresh, 1000);
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


class ApprovalPage:
    """Starlette routes over `gate.approvals`; `hosts` are the Host header values accepted."""

    def __init__(self, gate: Gate, hosts: set[str]) -> None:
        self.gate = gate
        self.hosts = set(hosts)
        self._key = secrets.token_bytes(32)

    def routes(self) -> list[Route]:
        return [
            Route("/approvals", self.page, methods=["GET", "POST"]),
            Route("/approvals/list", self.fragment, methods=["GET"]),
            Route("/approvals/app.js", self.script, methods=["GET"]),
        ]

    # checks -------------------------------------------------------------------------

    def _origin_ok(self, request: Request) -> bool:
        host = request.headers.get("host", "")
        if host not in self.hosts:
            return False
        origin = request.headers.get("origin")
        if request.method == "POST":
            return origin == f"http://{host}"
        return origin is None or origin == f"http://{host}"

    def _csrf(self, cookie: str) -> str:
        return hmac.new(self._key, cookie.encode(), hashlib.sha256).hexdigest()

    def _headers(self) -> dict[str, str]:
        return {"Content-Security-Policy": _CSP, "X-Frame-Options": "DENY", "Cache-Control": "no-store",
                "Referrer-Policy": "same-origin", "X-Content-Type-Options": "nosniff"}

    # handlers -----------------------------------------------------------------------

    async def script(self, request: Request) -> Response:
        if not self._origin_ok(request):
            return PlainTextResponse("forbidden", status_code=403)
        return Response(_JS, media_type="text/javascript", headers=self._headers())

    async def fragment(self, request: Request) -> Response:
        if not self._origin_ok(request):
            return PlainTextResponse("forbidden", status_code=403)
        cookie = request.cookies.get(COOKIE, "")
        if not cookie:
            return PlainTextResponse("no session", status_code=403)
        actions = await anyio.to_thread.run_sync(self.gate.approvals.listing)
        return HTMLResponse(self._list_html(actions, self._csrf(cookie)), headers=self._headers())

    async def page(self, request: Request) -> Response:
        if not self._origin_ok(request):
            return PlainTextResponse("forbidden: bad Host or Origin", status_code=403)
        cookie = request.cookies.get(COOKIE, "")
        message, status = "", 200
        if request.method == "POST":
            form = await request.form()
            field = {k: str(form.get(k) or "") for k in ("action_id", "name", "code", "decision", "reason", "csrf")}
            if not cookie or not hmac.compare_digest(field["csrf"], self._csrf(cookie)):
                return PlainTextResponse("forbidden: missing or wrong CSRF token; reload the page", status_code=403)
            message, status = await self._decide(field)
        new_cookie = not cookie
        if new_cookie:
            cookie = secrets.token_urlsafe(32)
        actions = await anyio.to_thread.run_sync(self.gate.approvals.listing)
        body = self._page_html(actions, self._csrf(cookie), message)
        shipping = await anyio.to_thread.run_sync(self._shipping_failure)
        if shipping:  # an approver should know the audit trail is not leaving the box
            body = body.replace("</h1>", f'</h1><p id="shipping" role="alert"><strong>receipts are not being shipped '
                                f'off the box</strong>: {_e(shipping)}</p>', 1)
        response = HTMLResponse(body, status_code=status, headers=self._headers())
        if new_cookie:
            response.set_cookie(COOKIE, cookie, httponly=True, samesite="strict", path="/approvals")
        return response

    def _shipping_failure(self) -> str | None:
        """The background shipper's last error (see safe_mcp.gate.ship), or None when it works or is off."""
        if self.gate.config.receipts.ship is None:
            return None
        from safe_mcp.errors import StateError
        from safe_mcp.gate.ship import ship_status

        try:
            error = ship_status(self.gate.store)["last_error"]
        except StateError as exc:
            return f"cannot read the shipping status: {exc}"
        return str(error) if error else None

    async def _decide(self, field: dict[str, str]) -> tuple[str, int]:
        if field["decision"] not in ("approve", "deny"):
            return "choose approve or deny", 400
        desk = self.gate.approvals
        try:
            result = await anyio.to_thread.run_sync(
                lambda: desk.decide(field["action_id"], field["name"].strip(), field["code"], "web",
                                    field["decision"] == "approve", field["reason"]))
        except Refused as exc:
            return exc.text(), 403
        except SafeMcpError as exc:
            return f"error: {exc}", 500
        return f"{result.message} (receipt {result.receipt_id})", 200

    # html ---------------------------------------------------------------------------

    def _list_html(self, actions: list[dict[str, Any]], csrf: str) -> str:
        ids = " ".join(a["action_id"] for a in actions)
        items = []
        for a in actions:
            expires = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(a["expires"]))
            approved = ", ".join(a["approved_by"]) or "nobody yet"
            items.append(f"""
<li class="action" id="{_e(a['action_id'])}">
  <h2>{_e(a['effect'])}: {_e(a['tool'])} on {_e(a['target'])}</h2>
  <p>action <code>{_e(a['action_id'])}</code>, expires {_e(expires)}; approved by {_e(approved)}
     ({len(a['approved_by'])} of {_e(a['required'])} needed); requested by {_e(a['requested_by'] or 'the agent')}</p>
  <h3>call</h3><pre class="statement">{_e(json.dumps(a['statement'], indent=2, ensure_ascii=False, default=str))}</pre>
  <h3>preview</h3><pre class="preview">{_e(json.dumps(a['preview'], indent=2, ensure_ascii=False, default=str))}</pre>
  <form method="post" action="/approvals">
    <input type="hidden" name="action_id" value="{_e(a['action_id'])}">
    <input type="hidden" name="csrf" value="{_e(csrf)}">
    <label>name <input name="name" autocomplete="username" required></label>
    <label>code <input name="code" inputmode="numeric" pattern="[0-9]{{6}}" autocomplete="one-time-code" required></label>
    <label>reason <input name="reason"></label>
    <button name="decision" value="approve">approve</button>
    <button name="decision" value="deny">deny</button>
  </form>
</li>""")
        empty = "" if actions else '<li class="empty">nothing waits for approval</li>'
        return f'<ul id="actions" data-ids="{_e(ids)}">{"".join(items)}{empty}</ul>'

    def _page_html(self, actions: list[dict[str, Any]], csrf: str, message: str) -> str:
        note = f'<p id="message" role="status">{_e(message)}</p>' if message else ""
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>safe-mcp approvals</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}pre{{background:#f4f4f4;padding:.5em;overflow:auto}}
li.action{{border:1px solid #ccc;padding:1em;margin:1em 0;list-style:none}}</style></head>
<body><h1>safe-mcp: actions waiting for a human</h1>{note}
{self._list_html(actions, csrf)}
<script src="/approvals/app.js"></script></body></html>"""


def loopback_hosts(host: str, port: int) -> set[str]:
    hosts = {f"{host}:{port}"}
    if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        hosts |= {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
    return hosts


def serve_in_thread(gate: Gate, host: str, port: int, extra_hosts: list[str]) -> threading.Thread:
    """Serve the approval page on its own port in a daemon thread (beside a stdio server)."""
    import uvicorn
    from starlette.applications import Starlette

    page = ApprovalPage(gate, loopback_hosts(host, port) | set(extra_hosts))
    app = Starlette(routes=page.routes())
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="safe-mcp-approvals", daemon=True)
    thread.start()
    return thread
