"""CLI commands for locked-down installs: `policy keygen|sign|verify`, `token create|list|revoke`,
`secrets check`, `inventory-schema`, and the HTTP/SSE listener set-up used by `serve`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from safe_mcp.gate.runtime import Runtime
    from safe_mcp.trust.config import Config

__all__ = ["COMMANDS", "UnixListener", "add_parsers", "run_server", "secrets_check"]


@dataclass(frozen=True)
class UnixListener:
    """Serve on the Unix socket `path` (connectable by its owner and `group`, if any); `source` and `key` say where
    it was asked for (the config or the command line), for errors."""

    path: Path
    group: str
    source: str
    key: str


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("policy", help="org policy signing: keygen, sign, verify")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    kg = psub.add_parser("keygen", help="write DIR/policy.key (keep it secret) and DIR/policy.pub (pin it)")
    kg.add_argument("--out", metavar="DIR", default=".", help="directory for the key pair (default .)")
    sg = psub.add_parser("sign", help="write FILE.sig beside FILE")
    sg.add_argument("file")
    sg.add_argument("--key", metavar="K", required=True, help="the policy.key from keygen")
    vf = psub.add_parser("verify", help="check FILE against FILE.sig and a public key, and that it parses")
    vf.add_argument("file")
    vf.add_argument("--pub", metavar="P", help="public key (default: $SAFE_MCP_POLICY_PUBKEY, else /etc/safe-mcp/policy.pub)")

    t = sub.add_parser("token", help="bearer tokens for HTTP/SSE clients")
    tsub = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    tc = tsub.add_parser("create", parents=[common], help="create a token; it is printed once, only its hash is kept")
    tc.add_argument("--name", required=True, help="who uses it; recorded in every receipt of its calls")
    tc.add_argument("--role", choices=["agent", "approver", "admin"], default="agent")
    tsub.add_parser("list", parents=[common], help="tokens by name, role and state (never the tokens)")
    tr = tsub.add_parser("revoke", parents=[common], help="revoke the live token with this name")
    tr.add_argument("name")


def cmd_policy(args: argparse.Namespace) -> int:
    from safe_mcp.trust.signing import keygen, sign_file

    if args.action == "keygen":
        key, pub_path = keygen(Path(args.out))
        print(f"private key: {key} (keep it off developer machines)\npublic key:  {pub_path} (pin it: /etc/safe-mcp/policy.pub "
              "or SAFE_MCP_POLICY_PUBKEY)")
        return 0
    if args.action == "sign":
        sig = sign_file(Path(args.file), Path(args.key))
        print(f"signed: {sig}")
        return 0
    from safe_mcp.trust.orgpolicy import find_policy, load_policy

    pub: Path | None = Path(args.pub) if args.pub else find_policy(None)[1]
    if pub is None:
        print("safe-mcp: no public key: pass --pub or set SAFE_MCP_POLICY_PUBKEY", file=sys.stderr)
        return 2
    policy = load_policy(Path(args.file), pub)
    print(f"ok: {policy.source} is signed by {pub}; digest {policy.digest}")
    return 0


def _store(args: argparse.Namespace) -> Any:
    from safe_mcp.faces.cli_common import config_of
    from safe_mcp.gate.runtime import open_state
    from safe_mcp.trust.auth import TokenStore

    return TokenStore(open_state(config_of(args)), owned=True)


def cmd_token(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        if args.action == "create":
            token = store.create(args.name, args.role)
            print(token)
            print(f"token {args.name!r} ({args.role}) created; it is shown once. Send it as 'Authorization: Bearer ...'",
                  file=sys.stderr)
            return 0
        if args.action == "list":
            for info in store.list():
                state = "revoked " + time.strftime("%Y-%m-%d %H:%M", time.gmtime(info.revoked)) if info.revoked else "live"
                print(f"{info.name:<24} {info.role:<9} created {time.strftime('%Y-%m-%d %H:%M', time.gmtime(info.created))}"
                      f"  {state}")
            return 0
        if store.revoke(args.name):
            print(f"revoked {args.name!r}; requests with it now get 401")
            return 0
        print(f"safe-mcp: no live token named {args.name!r}", file=sys.stderr)
        return 1
    finally:
        store.close()


def cmd_inventory_schema(args: argparse.Namespace) -> int:
    from safe_mcp.gate.inventory import inventory_schema

    print(json.dumps(inventory_schema(), indent=2, sort_keys=True))
    return 0


def secrets_check(config: Config) -> int:
    """Resolve every secret reference of `config`; print ok or the problem for each, never a value."""
    from safe_mcp.errors import ConfigError
    from safe_mcp.trust.secrets import resolve_ref

    bad = 0
    seen = 0
    for name, target in config.targets.items():
        for key, ref in target.spec.secret_refs(target.settings).items():
            seen += 1
            try:
                resolve_ref(ref, source=config.source, key=f"targets.{name}.{key}")
                print(f"ok       targets.{name}.{key} = {ref}")
            except ConfigError as exc:
                bad += 1
                print(f"MISSING  targets.{name}.{key} = {ref}: {exc.problem}" + (f" (fix: {exc.fix})" if exc.fix else ""))
    if not seen:
        print("this config references no secrets")
    return 1 if bad else 0


def run_server(runtime: Runtime, transport: str, host: str, port: int, *, loopback: bool,
               uds: UnixListener | None = None) -> None:
    """Serve `runtime`: stdio, or HTTP/SSE with tokens (unless opted out on loopback) and Host/Origin checks, on
    host:port or on the Unix socket `uds`. With `[receipts.ship]`, receipts are shipped in the background while it
    serves, and once more at the end."""
    shipper = None
    if runtime.config.receipts.ship is not None:
        from safe_mcp.gate.ship import Shipper

        shipper = Shipper(runtime.store, runtime.config)
        shipper.start()
    try:
        _run_server(runtime, transport, host, port, loopback=loopback, uds=uds)
    finally:
        if shipper is not None:
            shipper.stop()


def _run_server(runtime: Runtime, transport: str, host: str, port: int, *, loopback: bool,
                uds: UnixListener | None) -> None:
    from safe_mcp.faces.server import build_server
    from safe_mcp.trust.secretstore import install_log_scrubber

    install_log_scrubber(runtime.scrub)
    settings = runtime.config.server
    if transport == "stdio":
        import anyio

        # Not the SDK's stdio reader: ours caps each request and answers every line (see safe_mcp.faces.stdio_guard).
        anyio.run(build_server(runtime).run_stdio_capped, settings.max_request_bytes)
        return
    from mcp.server.transport_security import TransportSecuritySettings

    from safe_mcp.trust.auth import TokenStore

    tokens = TokenStore(runtime.store) if settings.auth == "token" else None
    oidc = None
    if settings.auth == "oidc":
        from safe_mcp.trust.oidc import OidcVerifier

        oidc = OidcVerifier(settings.issuer, settings.audience, roles_claim=settings.roles_claim, roles=settings.roles)
    path = "/sse" if transport == "sse" else "/mcp"
    shown = f"[{host}]" if ":" in host else host
    hosts, origins = list(settings.allowed_hosts), list(settings.allowed_origins)
    from safe_mcp.faces.web import ApprovalPage, loopback_hosts

    if uds is not None:
        # Over the socket, Host is whatever the client writes: `localhost` (what `safe-mcp connect unix://` and
        # `curl --unix-socket` send) plus [server] allowed_hosts. No browser reaches a socket, so no Origin is
        # accepted unless allowed_origins names it. The TCP listener's lists are not widened by this.
        from safe_mcp.faces.uds import UDS_HOST

        own_url, hosts, page_hosts = f"http://{UDS_HOST}{path}", [UDS_HOST, *hosts], {UDS_HOST}
    else:
        own_url = f"http://{shown}:{port}{path}"
        if loopback:
            hosts += ["127.0.0.1:*", "localhost:*", "[::1]:*"]
            origins += ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
        page_hosts = loopback_hosts(host, port) if loopback else {f"{shown}:{port}"}
    server = build_server(runtime, tokens=tokens, url=own_url, oidc=oidc)
    security = TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)
    # The human approval page on the MCP listener itself. Its routes take no bearer token (an approver
    # is not an agent): they check Host, Origin and CSRF themselves, and approving needs a TOTP code.
    page_hosts |= {h for h in settings.allowed_hosts if not h.endswith(":*")}
    for route in ApprovalPage(runtime.gate, page_hosts).routes():
        server.custom_route(route.path, methods=sorted(route.methods or {"GET"}))(route.endpoint)
    where = f"unix:{uds.path}" if uds is not None else f"{host}:{port}"
    logging.getLogger("safe_mcp").info("serving %s on %s (auth: %s)", transport, where, settings.auth)
    import anyio
    import uvicorn

    from safe_mcp.faces.http_guard import BodyGuard, guard_endpoint

    cap = settings.max_request_bytes
    if transport == "sse":
        app = server.sse_app(max_request_body_size=cap, transport_security=security, host=host)
        guard_endpoint(app, "/messages")  # where SSE clients POST; malformed envelopes etc. (see safe_mcp.faces.wire)
    else:
        app = server.streamable_http_app(max_request_body_size=cap, transport_security=security, host=host)
        guard_endpoint(app, path)  # malformed envelopes and JSON the SDK's parser rejects (see safe_mcp.faces.wire)
    # The SDK's run(), with its app behind BodyGuard: no body over the cap is read whole, token or not.
    config = uvicorn.Config(BodyGuard(app, cap), host=host, port=port, log_level=server.settings.log_level.lower())
    if uds is None:
        anyio.run(uvicorn.Server(config).serve)
        return
    from safe_mcp.faces.uds import bind_unix, remove_unix, stopping_on_signals

    server_ = uvicorn.Server(config)

    async def serve_unix() -> list[int]:
        # Bound here, not by uvicorn (which would create it 0666 and chmod it after): see safe_mcp.faces.uds.
        # Bound, and the signals taken, only once the event loop runs; before that a signal simply ends the
        # process, and no socket exists yet to clean up.
        with stopping_on_signals(server_) as received:
            sock = bind_unix(uds.path, uds.group, uds.source, uds.key)
            inode = os.lstat(uds.path).st_ino
            try:
                await server_.serve([sock])
            finally:
                sock.close()
                remove_unix(uds.path, inode)
        return received

    received = anyio.run(serve_unix)
    if received:
        raise SystemExit(128 + received[0])

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "policy": cmd_policy, "token": cmd_token, "inventory-schema": cmd_inventory_schema,
}
