"""The approval page: pending `human` actions with previews, approved or denied with name + code.

Served at `/approvals` by `serve` (on the MCP port in HTTP mode, or on `--approvals-port` /
`[approvals] port` beside any transport). It accepts only the Host values it is bound to (plus
`[approvals] allowed_hosts`), requires a same-origin `Origin` on every POST, and checks a CSRF
token (HMAC of a per-browser cookie under a per-process key) on every decision. Everything
shown is HTML-escaped: previews carry data an agent chose.

With `[approvals] oidc_client_id` the page is an OpenID client of the team's provider: nothing is shown
until an approver signs in (`/approvals/login` -> provider -> `/approvals/callback`, see
`safe_mcp.trust.oidc_login`), and a decision is made as "oidc:SUB" of the signed-in approver, carried by a
signed, HttpOnly, SameSite=strict cookie that lasts `oidc_session_s`. The CSRF token is then the HMAC of
that session cookie. Each sign-in's state is single use, bound to the browser that started it by a
second cookie, and forgotten after ten minutes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from safe_mcp.errors import Refused, SafeMcpError
from safe_mcp.trust.oidc import IssuerKeys
from safe_mcp.trust.oidc_login import Approver, LoginFailed, LoginStart, OidcLogin, approver_of_access_token

if TYPE_CHECKING:
    from safe_mcp.gate.approvals import DecisionResult
    from safe_mcp.gate.pipeline import Gate

__all__ = ["ApprovalPage", "serve_in_thread"]

log = logging.getLogger("safe_mcp")
COOKIE = "safe_mcp_approvals"
SESSION_COOKIE = "safe_mcp_approver"
LOGIN_COOKIE = "safe_mcp_login"
_LOGIN_TTL_S = 600.0
_LOGINS_MAX = 1000  # sign-ins started and not finished; beyond this the oldest are forgotten
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
        self._session_key = hmac.new(self._key, b"safe-mcp/approver-session", hashlib.sha256).digest()
        self.login = _provider_login(gate)
        self._logins: dict[str, tuple[LoginStart, str, float]] = {}  # state -> (sign-in, browser binding, expiry)
        self._agent_keys: IssuerKeys | None = None  # [server] issuer's keys, when approvers sign in elsewhere

    def routes(self) -> list[Route]:
        routes = [
            Route("/approvals", self.page, methods=["GET", "POST"]),
            Route("/approvals/list", self.fragment, methods=["GET"]),
            Route("/approvals/app.js", self.script, methods=["GET"]),
        ]
        if self.login is not None:
            routes += [Route("/approvals/login", self.sign_in, methods=["GET"]),
                       Route("/approvals/callback", self.callback, methods=["GET"]),
                       Route("/approvals/logout", self.sign_out, methods=["POST"])]
            if self.gate.config.server.auth == "oidc":
                routes.append(Route("/approvals/decide", self.decide_bearer, methods=["POST"]))
        return routes

    async def decide_bearer(self, request: Request) -> Response:
        """A CLI decides with `Authorization: Bearer <access token for [server] audience>` and a JSON body
        {action_id, decision, reason?, code?}. No cookie counts here, so no CSRF token is needed; a browser's
        cross-site request cannot set the header."""
        host = request.headers.get("host", "")
        origin = request.headers.get("origin")
        if host not in self.hosts or (origin is not None and origin != f"http://{host}") or self.login is None:
            return JSONResponse({"error": "forbidden: bad Host or Origin"}, status_code=403)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        server = self.gate.config.server
        who = None
        if scheme.lower() == "bearer" and token:
            keys = self.login.keys if self.login.issuer == server.issuer else self._bearer_keys()
            who = await approver_of_access_token(keys, token.strip(), server.audience, server.roles_claim,
                                                 server.roles)
        if who is None:
            return JSONResponse({"error": "a valid bearer access token from the provider is required"},
                                status_code=401, headers={"WWW-Authenticate": 'Bearer realm="safe-mcp approvals"'})
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("decision") not in ("approve", "deny"):
            return JSONResponse({"error": 'send JSON {"action_id": ..., "decision": "approve" | "deny"}'},
                                status_code=400)
        field = {k: str(body.get(k) or "") for k in ("action_id", "decision", "reason", "code")}
        message, status = await self._run_decision(lambda: self.gate.approvals.decide_signed_in(
            field["action_id"], who.subject, who.role, who.display, "api", field["decision"] == "approve",
            field["reason"], field["code"]))
        return JSONResponse({"approver": who.name, "message": message} if status == 200 else
                            {"approver": who.name, "error": message}, status_code=status)

    def _bearer_keys(self) -> IssuerKeys:
        if self._agent_keys is None:
            self._agent_keys = IssuerKeys(self.gate.config.server.issuer)
        return self._agent_keys

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
        cookie = request.cookies.get(SESSION_COOKIE if self.login else COOKIE, "")
        if not cookie or (self.login is not None and self._session(cookie) is None):
            return PlainTextResponse("no session", status_code=403)
        actions = await anyio.to_thread.run_sync(self.gate.approvals.listing)
        return HTMLResponse(self._list_html(actions, self._csrf(cookie)), headers=self._headers())

    async def page(self, request: Request) -> Response:
        if not self._origin_ok(request):
            return PlainTextResponse("forbidden: bad Host or Origin", status_code=403)
        if self.login is not None:
            return await self._signed_in_page(request)
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

    async def _render(self, cookie: str, message: str, status: int, banner: str = "") -> HTMLResponse:
        actions = await anyio.to_thread.run_sync(self.gate.approvals.listing)
        body = self._page_html(actions, self._csrf(cookie), message)
        if banner:
            body = body.replace("</h1>", "</h1>" + banner, 1)
        shipping = await anyio.to_thread.run_sync(self._shipping_failure)
        if shipping:  # an approver should know the audit trail is not leaving the box
            body = body.replace("</h1>", f'</h1><p id="shipping" role="alert"><strong>receipts are not being shipped '
                                f'off the box</strong>: {_e(shipping)}</p>', 1)
        return HTMLResponse(body, status_code=status, headers=self._headers())

    # provider sign-in ------------------------------------------------------------------

    async def _signed_in_page(self, request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        who = self._session(cookie) if cookie else None
        if who is None:
            if request.method == "POST":
                return self._notice("Not signed in", "Your sign-in is missing or has expired; nothing was decided.",
                                    403)
            return self._notice("Sign in to approve", "Actions waiting for approval are shown to signed-in "
                                "approvers only.", 200)
        message, status = "", 200
        if request.method == "POST":
            form = await request.form()
            field = {k: str(form.get(k) or "") for k in ("action_id", "code", "decision", "reason", "csrf")}
            if not hmac.compare_digest(field["csrf"], self._csrf(cookie)):
                return PlainTextResponse("forbidden: missing or wrong CSRF token; reload the page", status_code=403)
            if field["decision"] not in ("approve", "deny"):
                message, status = "choose approve or deny", 400
            else:
                message, status = await self._run_decision(lambda: self.gate.approvals.decide_signed_in(
                    field["action_id"], who.subject, who.role, who.display, "web", field["decision"] == "approve",
                    field["reason"], field["code"]))
        banner = (f'<p id="signed-in">signed in as <strong>{_e(who.name)}</strong>'
                  f'{" (" + _e(who.display) + ")" if who.display else ""}, role {_e(who.role)} '
                  f'<form method="post" action="/approvals/logout" style="display:inline">'
                  f'<input type="hidden" name="csrf" value="{_e(self._csrf(cookie))}">'
                  f'<button>sign out</button></form></p>')
        return await self._render(cookie, message, status, banner)

    async def sign_in(self, request: Request) -> Response:
        """Start a sign-in: remember its state (bound to this browser) and send the browser to the provider."""
        if not self._origin_ok(request) or self.login is None:
            return PlainTextResponse("forbidden: bad Host or Origin", status_code=403)
        redirect_uri = f"http://{request.headers['host']}/approvals/callback"
        try:
            start = await self.login.start(redirect_uri)
        except LoginFailed as exc:
            return self._notice("Sign-in is not available", f"{exc}. Try again later or tell an admin.", 502)
        now = time.monotonic()
        self._logins = {k: v for k, v in self._logins.items() if v[2] > now}
        while len(self._logins) >= _LOGINS_MAX:
            self._logins.pop(next(iter(self._logins)))
        binding = secrets.token_urlsafe(32)
        self._logins[start.state] = (start, _digest(binding), now + _LOGIN_TTL_S)
        response = Response(status_code=303, headers={"Location": start.url, **self._headers()})
        # Lax, not strict: the provider's redirect back is a cross-site navigation, which a strict cookie misses.
        response.set_cookie(LOGIN_COOKIE, binding, max_age=int(_LOGIN_TTL_S), httponly=True, samesite="lax",
                            path="/approvals/callback")
        return response

    async def callback(self, request: Request) -> Response:
        """The provider's redirect back: the state must be one this browser started, unused and fresh."""
        if not self._origin_ok(request) or self.login is None:
            return PlainTextResponse("forbidden: bad Host or Origin", status_code=403)
        q = request.query_params
        state = q.get("state", "")
        pending = self._logins.pop(state, None) if state else None
        binding = request.cookies.get(LOGIN_COOKIE, "")
        if pending is None or pending[2] < time.monotonic() or not hmac.compare_digest(pending[1], _digest(binding)):
            return self._refused_sign_in("this sign-in is unknown, already used, expired or was started in another "
                                         "browser (state mismatch)", 400)
        if q.get("error"):
            return self._refused_sign_in(f"the provider refused the sign-in: {q.get('error')}", 403)
        try:
            who = await self.login.finish(pending[0], q.get("code", ""))
        except LoginFailed as exc:
            return self._refused_sign_in(str(exc), 403)
        if who.role not in ("approver", "admin"):
            log.warning("approval sign-in of %s refused: role %s", who.name, who.role)
            return self._notice("Not an approver", f"You signed in as {who.name}, whose role is "
                                f"{who.role or 'none'}; only approvers and admins may decide on actions. Ask an "
                                "admin to add you to an approver group at the provider.", 403)
        log.info("approver %s signed in to the approval page", who.name)
        expires = int(time.time()) + self.gate.config.approvals.oidc_session_s
        response = self._notice("Signed in", f"Signed in as {who.name}. Continue to the approvals.", 200,
                                refresh=True)
        response.set_cookie(SESSION_COOKIE, self._seal(who, expires), max_age=self.gate.config.approvals.oidc_session_s,
                            httponly=True, samesite="strict", path="/approvals")
        response.delete_cookie(LOGIN_COOKIE, path="/approvals/callback")
        return response

    async def sign_out(self, request: Request) -> Response:
        if not self._origin_ok(request):
            return PlainTextResponse("forbidden: bad Host or Origin", status_code=403)
        cookie = request.cookies.get(SESSION_COOKIE, "")
        form = await request.form()
        if not cookie or not hmac.compare_digest(str(form.get("csrf") or ""), self._csrf(cookie)):
            return PlainTextResponse("forbidden: missing or wrong CSRF token; reload the page", status_code=403)
        response = self._notice("Signed out", "You are signed out of the approval page.", 200)
        response.delete_cookie(SESSION_COOKIE, path="/approvals")
        return response

    def _refused_sign_in(self, why: str, status: int) -> HTMLResponse:
        log.warning("approval sign-in refused: %s", why)
        return self._notice("Sign-in refused", f"{why}. Nothing was decided; sign in again.", status)

    def _notice(self, title: str, text: str, status: int, *, refresh: bool = False) -> HTMLResponse:
        head = '<meta http-equiv="refresh" content="0;url=/approvals">' if refresh else ""
        return HTMLResponse(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{head}<title>safe-mcp approvals: {_e(title)}</title></head>
<body><h1>{_e(title)}</h1><p id="message" role="status">{_e(text)}</p>
<p><a id="sign-in" href="/approvals/login">sign in with your provider</a> · <a href="/approvals">approvals</a></p>
</body></html>""", status_code=status, headers=self._headers())

    def _seal(self, who: Approver, expires: int) -> str:
        """The session cookie: who signed in and until when, under an HMAC only this process can make."""
        blob = base64.urlsafe_b64encode(json.dumps(
            {"sub": who.subject, "role": who.role, "display": who.display, "exp": expires},
            separators=(",", ":")).encode()).decode().rstrip("=")
        return blob + "." + hmac.new(self._session_key, blob.encode(), hashlib.sha256).hexdigest()

    def _session(self, cookie: str) -> Approver | None:
        """The approver a session cookie names, or None when it is forged, malformed or expired."""
        blob, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac, hmac.new(self._session_key, blob.encode(), hashlib.sha256).hexdigest()):
            return None
        try:
            doc = json.loads(base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4)))
            if int(doc["exp"]) < time.time():
                return None
            return Approver(subject=doc["sub"], role=doc["role"], display=doc["display"])
        except (ValueError, KeyError, TypeError):
            return None

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
        return await self._run_decision(lambda: desk.decide(
            field["action_id"], field["name"].strip(), field["code"], "web", field["decision"] == "approve",
            field["reason"]))

    async def _run_decision(self, decide: Callable[[], DecisionResult]) -> tuple[str, int]:
        try:
            result = await anyio.to_thread.run_sync(decide)
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
    {self._identity_inputs()}
    <label>reason <input name="reason"></label>
    <button name="decision" value="approve">approve</button>
    <button name="decision" value="deny">deny</button>
  </form>
</li>""")
        empty = "" if actions else '<li class="empty">nothing waits for approval</li>'
        return f'<ul id="actions" data-ids="{_e(ids)}">{"".join(items)}{empty}</ul>'

    def _identity_inputs(self) -> str:
        """Name and code without provider sign-in; with it, the code only when TOTP is on top."""
        code = ('<label>code <input name="code" inputmode="numeric" pattern="[0-9]{6}" '
                'autocomplete="one-time-code" required></label>')
        if self.login is None:
            return '<label>name <input name="name" autocomplete="username" required></label>\n    ' + code
        return code if self.gate.config.approvals.totp_required() else ""

    def _page_html(self, actions: list[dict[str, Any]], csrf: str, message: str) -> str:
        note = f'<p id="message" role="status">{_e(message)}</p>' if message else ""
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>safe-mcp approvals</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}pre{{background:#f4f4f4;padding:.5em;overflow:auto}}
li.action{{border:1px solid #ccc;padding:1em;margin:1em 0;list-style:none}}</style></head>
<body><h1>safe-mcp: actions waiting for a human</h1>{note}
{self._list_html(actions, csrf)}
<script src="/approvals/app.js"></script></body></html>"""


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _provider_login(gate: Gate) -> OidcLogin | None:
    """The page's OpenID client when `[approvals] oidc_client_id` is set; its secret is resolved now (fail early)."""
    from safe_mcp.trust.secrets import resolve_ref

    settings, server = gate.config.approvals, gate.config.server
    if not settings.oidc_client_id:
        return None
    secret = (resolve_ref(settings.oidc_client_secret, source=gate.config.source, key="approvals.oidc_client_secret")
              if settings.oidc_client_secret else None)
    return OidcLogin(settings.provider_issuer(server), settings.oidc_client_id, secret, scopes=settings.oidc_scopes,
                     roles_claim=server.roles_claim, roles=server.roles)


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
