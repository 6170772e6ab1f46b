"""The `safe-mcp` command. Exit codes: 0 ok, 1 refused or failed check, 2 usage or config error."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safe_mcp.errors import ConfigError, Refused, SafeMcpError
from safe_mcp.faces.cli_common import config_of, config_path_of, runtime_of
from safe_mcp.faces.cli_lockdown import COMMANDS as LOCKDOWN_COMMANDS
from safe_mcp.faces.cli_lockdown import add_parsers as _locked_down_parsers
from safe_mcp.faces.cli_reconcile import add_parser as _reconcile_parser
from safe_mcp.faces.cli_state import add_parser as _state_parser

if TYPE_CHECKING:
    from safe_mcp.faces.cli_lockdown import UnixListener
    from safe_mcp.gate.runtime import Runtime
    from safe_mcp.trust.config import Config

__all__ = ["main"]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="F", help="config file (default: $SAFE_MCP_CONFIG, else ./safe-mcp.toml)")
    common.add_argument("--policy", metavar="F", help="org policy (default: $SAFE_MCP_POLICY, else /etc/safe-mcp/policy.toml)")
    p = argparse.ArgumentParser(prog="safe-mcp", description="A safety gate between coding agents and real systems.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", parents=[common], help="run the MCP server (stdio by default)")
    s.add_argument("--transport", choices=["stdio", "sse", "http"], default="stdio")
    s.add_argument("--host", default="127.0.0.1", help="HTTP/SSE bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8765, help="HTTP/SSE port (default 8765)")
    s.add_argument("--uds", metavar="PATH", help="HTTP: listen on this Unix socket instead of --host/--port (mode 0600, "
                                                 "or 0660 with --uds-group; tokens still required); overrides [server] uds")
    s.add_argument("--uds-group", metavar="GROUP", help="the group whose members may connect to the --uds socket "
                                                        "(mode 0660); overrides [server] uds_group")
    s.add_argument("--approvals-port", type=int, metavar="PORT",
                   help="serve the human approval page at /approvals on this port (any transport)")

    d = sub.add_parser("demo", parents=[common], help="a scripted session on a demo SQLite shop")
    d.add_argument("--dir", default="safe-mcp-demo", help="where to create the demo database (default ./safe-mcp-demo)")

    c = sub.add_parser("check", parents=[common], help="validate a config and print its blast radius")
    c.add_argument("--format", choices=["text", "json", "md"], default="text")
    c.add_argument("--offline", action="store_true", help="do not connect to targets to audit their credentials")
    c.add_argument("--uds", metavar="PATH", help="the Unix socket the gateway serves on (default [server] uds): report "
                                                 "whether --client-user can connect to it")
    c.add_argument("--client-user", metavar="NAME", help="the OS user the MCP client (the agent) runs as: report what it "
                                                       "can reach of secrets, config, policy and state (default: you)")

    cn = sub.add_parser("connect", help="a stdio MCP server that relays to a gateway's streamable HTTP URL (for "
                                        "clients that only start stdio servers); holds only the bearer token")
    cn.add_argument("url", help="the gateway's MCP endpoint, e.g. http://127.0.0.1:8765/mcp, or its Unix socket "
                                "(serve --uds), e.g. unix:///run/safe-mcp/mcp.sock")
    tok = cn.add_mutually_exclusive_group()
    tok.add_argument("--token-env", metavar="VAR", help="read the bearer token from this environment variable "
                                                      "(default SAFE_MCP_TOKEN)")
    tok.add_argument("--token-file", metavar="F", help="read the bearer token from this file (mode 0600, yours)")

    r = sub.add_parser("receipts", help="list, show, verify or export receipts")
    rsub = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    rl = rsub.add_parser("list", parents=[common], help="the latest receipts")
    rl.add_argument("--limit", type=int, default=20)
    rs = rsub.add_parser("show", parents=[common], help="one receipt in full")
    rs.add_argument("receipt_id")
    rv = rsub.add_parser("verify", parents=[common], help="check the hash chain; exit 1 at the first broken link")
    rv.add_argument("--against", metavar="s3://BUCKET/PREFIX",
                    help="also compare the local ledger with the receipts shipped there; exit 1 at the first difference")
    rsub.add_parser("ship", parents=[common], help="ship the receipts not yet shipped to [receipts.ship] now")
    re_ = rsub.add_parser("export", parents=[common], help="every receipt as JSON Lines")
    re_.add_argument("--out", metavar="F", help="file to write (default stdout)")

    u = sub.add_parser("undo", parents=[common], help="undo a write by its receipt id, or a whole session, run or time span")
    u.add_argument("receipt_id", nargs="?")
    u.add_argument("--session", help="undo every write of this MCP session")
    u.add_argument("--run", dest="run_id", help="undo every write of this run_id")
    u.add_argument("--since", help="undo every write since a time (ISO) or a span back from now (30m, 2h)")
    u.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")

    sub.add_parser("gameday", parents=[common], help="replay real incidents against the config; changes nothing")

    b = sub.add_parser("breaker", help="list or reset tripped circuit breakers")
    bsub = b.add_subparsers(dest="action", required=True, metavar="ACTION")
    bsub.add_parser("list", parents=[common], help="breakers that are tripped now")
    br = bsub.add_parser("reset", parents=[common], help="let a session write again")
    br.add_argument("--session", help="only this principal: local over stdio, token:NAME or oidc:SUB over HTTP (default: any)")
    br.add_argument("--target", help="only this target (default: any)")

    pe = sub.add_parser("pending", parents=[common], help="list the actions that wait for confirmation, or show one")
    pe.add_argument("action_id", nargs="?", help="show this action in full: the call and its whole preview")
    pe.add_argument("--all", action="store_true", help="list expired actions too (they can no longer be confirmed)")
    pe.add_argument("--json", action="store_true", help="JSON for machines: ISO times, seconds_left, effective state")
    for verb, text in (("approve", "approve a pending action as an enrolled approver"),
                       ("deny", "deny a pending action as an enrolled approver")):
        ap = sub.add_parser(verb, parents=[common], help=f"{text} (code read from the terminal, or stdin)")
        ap.add_argument("action_id")
        ap.add_argument("--as", dest="approver", required=True, metavar="NAME")
        if verb == "deny":
            ap.add_argument("--reason", default="", help="why (recorded in the receipt)")
    apr = sub.add_parser("approver", help="enrol approvers of human actions")
    aprsub = apr.add_subparsers(dest="action", required=True, metavar="ACTION")
    aprsub.add_parser("add", parents=[common], help="enrol NAME: prints the TOTP secret as a QR code to scan").add_argument(
        "name")
    aprsub.add_parser("list", parents=[common], help="enrolled approvers")

    ob = sub.add_parser("outbox", help="list or cancel held mail")
    osub = ob.add_subparsers(dest="action", required=True, metavar="ACTION")
    osub.add_parser("list", parents=[common], help="the latest messages of every mail target")
    oc = osub.add_parser("cancel", parents=[common], help="cancel a held message (through undo, receipted)")
    oc.add_argument("id", help="the message's outbox id (msg_...) or the receipt id of its email_send")

    cc = sub.add_parser("client-config", parents=[common], help="print the JSON to paste into a client")
    cc.add_argument("client", choices=["cursor", "claude", "claude-code", "vscode"])
    cc.add_argument("--url", metavar="URL", help="reach a running `serve --transport http` at URL (with a bearer token) "
                                                 "instead of starting safe-mcp locally; a unix:///PATH socket (serve "
                                                 "--uds) is reached through `safe-mcp connect`")
    bu = sub.add_parser("bundle", parents=[common], help="write an MCP Bundle (.mcpb) that installs safe-mcp in Claude Desktop")
    bu.add_argument("--out", metavar="F", default="safe-mcp.mcpb", help="the bundle to write (default ./safe-mcp.mcpb)")

    sec = sub.add_parser("secrets", help="store secrets in the OS keyring")
    ssub = sec.add_subparsers(dest="action", required=True, metavar="ACTION")
    ss = ssub.add_parser("set", help="store a secret (read from the terminal, or stdin when piped)")
    ss.add_argument("name")
    ss.add_argument("--file", metavar="F", help="store in this secrets file (default: $SAFE_MCP_SECRETS_FILE if set)")
    ssub.add_parser("check", parents=[common], help="resolve every secret reference of the config (values never shown)")

    sub.add_parser("config-schema", help="print the JSON schema of the config file")
    sub.add_parser("inventory-schema", help="print the JSON schema of `check --format json`")
    _locked_down_parsers(sub, common)
    _reconcile_parser(sub, common)
    _state_parser(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="safe-mcp: %(levelname)s %(message)s")
    try:
        code = int(_COMMANDS[args.command](args))
        sys.stdout.flush()  # inside the try: a reader that went away is handled below, not at exit
        return code
    except ConfigError as exc:
        print(f"safe-mcp: config error: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"safe-mcp: {exc.text()}", file=sys.stderr)
        return 1
    except SafeMcpError as exc:
        print(f"safe-mcp: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`safe-mcp check | head`): stop quietly. Point stdout at devnull so the
        # interpreter's final flush does not raise again; 141 is what a shell reports for SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141




def cmd_serve(args: argparse.Namespace) -> int:
    config = config_of(args)
    uds = _uds_of(args, config)
    if args.transport != "stdio":
        from safe_mcp.trust.orgpolicy import check_listener

        # A Unix socket is local like loopback, and narrower: only its owner and group can connect.
        listener = (f"unix:{uds.path}", True) if uds else (args.host, args.host in LOOPBACK)
        for warning in check_listener(config, *listener):
            logging.getLogger("safe_mcp").warning(warning)
    from safe_mcp.gate.runtime import Runtime

    runtime = Runtime(config)
    if args.transport != "stdio":
        # A network listener on a read-only target whose role can write is one bug away from writes.
        for name, target in config.targets.items():
            if target.access.value != "read-only" or getattr(target.settings, "allow_writable_role", False):
                continue
            if runtime.gate.audit(name).get("can_write"):
                runtime.close()
                raise ConfigError(config.source, f"targets.{name}",
                                  f"target {name!r} is read-only but its database role can write; refusing to serve "
                                  f"it over {args.transport}",
                                  f"give it a role that can only read (safe-mcp check lists what it can do), or set "
                                  f"allow_writable_role = true under [targets.{name}]")
    from safe_mcp.faces.cli_lockdown import run_server

    approvals_port = args.approvals_port or config.approvals.port
    if approvals_port:
        from safe_mcp.faces.web import serve_in_thread

        serve_in_thread(runtime.gate, config.approvals.host, approvals_port, config.approvals.allowed_hosts)
        runtime.approval_page = f"http://{_url_host(config.approvals.host)}:{approvals_port}/approvals"
    elif args.transport != "stdio" and uds is None:  # a browser cannot open a Unix socket: no URL to offer
        runtime.approval_page = f"http://{_url_host(args.host)}:{args.port}/approvals"
    run_server(runtime, args.transport, args.host, args.port, loopback=args.host in LOOPBACK, uds=uds)
    return 0


def _uds_of(args: argparse.Namespace, config: Config) -> UnixListener | None:
    """The Unix socket to serve on: --uds (relative to here) over [server] uds (relative to the config)."""
    from safe_mcp.faces.cli_lockdown import UnixListener

    group = args.uds_group if args.uds_group is not None else config.server.uds_group
    if args.uds:
        uds = UnixListener(Path(args.uds).absolute(), group, "command line", "--uds")
    elif config.uds_path is not None and args.transport != "stdio":
        uds = UnixListener(config.uds_path, group, config.source, "server.uds")
    elif args.uds_group is not None:
        raise ConfigError("command line", "--uds-group", "--uds-group without a socket", "add --uds PATH")
    else:
        return None
    if args.transport != "http":
        raise ConfigError(uds.source, uds.key, f"a Unix socket is served over --transport http, not {args.transport}",
                          "add --transport http (safe-mcp connect unix://PATH bridges stdio clients to it)")
    return uds


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("0.0.0.0", "") else host)  # noqa: S104


def cmd_demo(args: argparse.Namespace) -> int:
    from safe_mcp.faces.demo import run_demo

    return int(run_demo(Path(args.dir)))


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 1 when a target cannot be used as configured: its audit could not connect, or its file is
    missing (offline: reported, but only the config itself is judged)."""
    from safe_mcp.gate.inventory import inventory, render_text
    from safe_mcp.trust.exposure import principal

    config = config_of(args)
    try:
        client = principal(args.client_user)
    except KeyError:
        print(f"safe-mcp: no OS user named {args.client_user!r} (--client-user takes a login name or a uid)",
              file=sys.stderr)
        return 2
    inv = inventory(config, client, Path(args.uds).absolute() if args.uds else None)
    problems = _missing_files(config, inv)
    if not args.offline:
        problems += _audit_targets(config, inv)
    from safe_mcp.gate.runtime import open_state
    from safe_mcp.gate.ship import check_shipping

    ship_lines, ship_problems = check_shipping(config, lambda: open_state(config), probe=not args.offline)
    problems += ship_problems
    if args.format == "json":
        print(json.dumps(inv, indent=2))
    elif args.format == "md":
        from safe_mcp.gate.inventory import render_md

        print(render_md(inv))
    else:
        from safe_mcp.faces.cli_table import terminal_width

        print(render_text(inv, terminal_width()))
    if args.format != "json":
        print("\n".join(ship_lines))
    for problem in problems:
        print(f"safe-mcp: check failed: {problem}", file=sys.stderr)
    if problems and args.offline:
        print("safe-mcp: (--offline judges the config only; these must be fixed before serving)", file=sys.stderr)
        return 0
    return 1 if problems else 0


def _missing_files(config: Config, inv: dict[str, Any]) -> list[str]:
    """A SQLite target whose database file does not exist cannot serve a single call."""
    by_name = {t["name"]: t for t in inv["targets"]}
    out = []
    for t in config.targets.values():
        path = getattr(t.settings, "path", None)
        if t.kind != "sqlite" or not isinstance(path, str) or path == ":memory:":
            continue
        full = Path(config.base_dir, path)
        if not full.exists():
            text = f"target {t.name}: the database file {full} does not exist"
            by_name[t.name].setdefault("problems", []).append(
                f"the database file {full} does not exist (create it, or fix path under [targets.{t.name}])")
            out.append(text)
    return out


def _audit_targets(config: Config, inv: dict[str, Any]) -> list[str]:
    """Connect to every target whose adapter can audit its credentials and add what it found; returns
    the targets that could not be audited. Progress goes to stderr, one line per target."""
    from safe_mcp.adapter import Adapter
    from safe_mcp.gate.runtime import Runtime

    auditable = [t for t in config.targets.values() if t.adapter_cls.audit is not Adapter.audit]
    if not auditable:
        return []
    failed = []
    # The pool logs every failed attempt; the one line per target below says it once.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    rt = Runtime(config, session="check")
    try:
        by_name = {t["name"]: t for t in inv["targets"]}
        for t in auditable:
            print(f"safe-mcp: auditing target {t.name} ({t.kind}) ...", end="", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                by_name[t.name]["audit"] = rt.gate.audit(t.name)
                print(f" ok ({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)
            except SafeMcpError as exc:
                print(f" could not connect ({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)
                by_name[t.name]["audit"] = {"can_write": None, "findings": [f"could not connect: {exc}"]}
                by_name[t.name].setdefault("problems", []).append(f"could not connect: {exc}")
                failed.append(f"target {t.name}: could not connect: {exc}")
    finally:
        rt.close()
    return failed


def cmd_connect(args: argparse.Namespace) -> int:
    from safe_mcp.faces.connect import run_bridge, token_from

    return run_bridge(args.url, token_from(args.token_env, args.token_file))


def cmd_receipts(args: argparse.Namespace) -> int:
    from safe_mcp.gate.runtime import open_state

    store = open_state(config_of(args))
    try:
        if args.action == "list":
            from safe_mcp.faces.cli_table import terminal_width
            from safe_mcp.faces.cli_views import render_receipts

            latest = store.receipts(args.limit)  # flushes first, so the count below includes batched reads
            total = int(store.query("SELECT count(*) FROM receipts")[0][0])
            print(render_receipts(latest, total, terminal_width()))
            return 0
        if args.action == "show":
            found = store.receipt(args.receipt_id)
            if found is None:
                print(f"safe-mcp: no receipt has id {args.receipt_id!r}", file=sys.stderr)
                return 1
            print(json.dumps(found.model_dump(mode="json"), indent=2, ensure_ascii=False))
            return 0
        if args.action == "ship" or (args.action == "verify" and args.against):
            return _receipts_off_the_box(args, store)
        if args.action == "verify":
            report = store.verify()
            if report.ok:
                print(f"ok: {report.count} receipts, chain intact")
                return 0
            print(f"BROKEN at {report.first_bad}: {report.problem} ({report.count} receipts read)")
            return 1
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
        try:
            for _seq, _rid, body, digest in store.iter_receipts():
                out.write(json.dumps({**json.loads(body), "hash": digest}, ensure_ascii=False) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
        return 0
    finally:
        store.close()


def _receipts_off_the_box(args: argparse.Namespace, store: Any) -> int:
    """`receipts ship` and `receipts verify --against s3://BUCKET/PREFIX` (see safe_mcp.gate.ship)."""
    from safe_mcp.gate.ship import ShipError, ship
    from safe_mcp.gate.ship_verify import verify_against

    config = config_of(args)
    try:
        if args.action == "ship":
            done = ship(store, config)
            print(f"shipped {done.shipped} receipts in {len(done.batches)} batches; shipped up to #{done.last_seq}")
            return 0
        report = verify_against(store, config, args.against)
    except ShipError as exc:
        print(f"safe-mcp: {exc}", file=sys.stderr)
        return 1
    for note in report.notes:
        print(f"note: {note}")
    if not report.ok:
        print(f"MISMATCH at {report.first_bad}: {report.problem}")
        return 1
    print(f"ok: {report.shipped} shipped receipts in {report.batches} batches match the local ledger; "
          f"{report.unshipped_local} local receipts not shipped yet")
    return 0


def cmd_undo(args: argparse.Namespace) -> int:
    from safe_mcp.gate import saga
    from safe_mcp.gate.pipeline import Caller

    scoped = args.session or args.run_id or args.since
    if bool(args.receipt_id) == bool(scoped):
        print("safe-mcp: give either a RECEIPT_ID or one of --session, --run, --since", file=sys.stderr)
        return 2
    rt = runtime_of(args)
    caller = Caller(session=rt.session, client="safe-mcp-cli")
    try:
        if args.receipt_id:
            r = rt.gate.undo(args.receipt_id, caller)
            print(f"{r.message} (receipt {r.receipt_id})")
            return 0
        since = saga.parse_since(args.since) if args.since else None
        steps = saga.plan(rt.gate, session=args.session, run_id=args.run_id, since=since)
        if not steps:
            print("nothing in that scope was changed")
            return 0
        if not args.dry_run:
            steps = saga.run(rt.gate, steps, caller)
        labels = {"to_undo": "would undo" if args.dry_run else "to undo", "undone": "undone",
                  "already_undone": "already undone", "irreversible": "NOT undone (irreversible)",
                  "failed": "NOT undone (failed)", "not_reached": "NOT undone (saga stopped)"}
        from safe_mcp.faces.cli_table import table, terminal_width

        print(table(["receipt", "time (UTC)", "target:tool", "status", "what"],
                    [[st.receipt_id, st.time[:19].replace("T", " "), f"{st.target}:{st.tool}", labels[st.status],
                      st.summary + (f" ({st.detail})" if st.detail and st.status != "undone" else "")]
                     for st in steps], width=terminal_width()))
        done = sum(st.status == "undone" for st in steps)
        left = [st for st in steps if st.status in {"irreversible", "failed", "not_reached", "to_undo"}]
        if args.dry_run:
            print(f"plan: {sum(st.status == 'to_undo' for st in steps)} to undo, newest first; nothing was changed")
            return 0
        print(f"undone: {done}; not undone: {len(left)}")
        return 1 if any(st.status in {"irreversible", "failed", "not_reached"} for st in steps) else 0
    finally:
        rt.close()


def cmd_gameday(args: argparse.Namespace) -> int:
    from safe_mcp.faces.cli_table import terminal_width
    from safe_mcp.faces.cli_views import render_gameday as render
    from safe_mcp.gate.gameday import exit_code, run_gameday

    rows = run_gameday(config_of(args))
    print(render(rows, terminal_width()))
    return exit_code(rows)


def cmd_breaker(args: argparse.Namespace) -> int:
    import getpass

    from safe_mcp.adapter import Call
    from safe_mcp.effects import Effect
    from safe_mcp.gate.pipeline import Caller

    rt = runtime_of(args)
    try:
        if args.action == "list":
            from safe_mcp.faces.cli_table import table, terminal_width

            tripped = rt.store.breakers()
            if tripped:
                print(table(["session", "target", "tripped (UTC)", "reason"],
                            [[session, target, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)), reason]
                             for session, target, at, reason in tripped], width=terminal_width()))
            print(f"{len(tripped)} tripped" if tripped else "no breaker is tripped")
            return 0
        reset = rt.store.reset_breakers(args.session, args.target)
        if not reset:
            print("no matching breaker is tripped")
            return 1
        who = Caller(session=rt.session, client=f"safe-mcp-cli ({getpass.getuser()})")
        for session, target in reset:
            rt.gate.record(Call(target=target, tool="breaker", args={"session": session}), who, Effect.WRITE,
                           "allow", f"breaker reset for session {session}", "breaker_reset")
            print(f"reset: {session} on {target}; its writes are allowed again")
        return 0
    finally:
        rt.close()


def cmd_reconcile(args: argparse.Namespace) -> int:
    from safe_mcp.faces.cli_reconcile import run

    rt = runtime_of(args)
    try:
        return run(args, rt)
    finally:
        rt.close()


def cmd_state(args: argparse.Namespace) -> int:
    from safe_mcp.faces.cli_state import run

    return run(args, config_of(args))


def cmd_pending(args: argparse.Namespace) -> int:
    from safe_mcp.faces.cli_table import terminal_width
    from safe_mcp.faces.cli_views import pending_doc, render_pending, render_pending_one, state_of
    from safe_mcp.gate.runtime import open_state

    store = open_state(config_of(args))
    try:
        now = time.time()
        if args.action_id:
            found = store.pending(args.action_id)
            if found is None:
                print(f"safe-mcp: no action has id {args.action_id!r} (safe-mcp pending lists them)", file=sys.stderr)
                return 1
            print(json.dumps(pending_doc(found, now), indent=2, ensure_ascii=False) if args.json
                  else render_pending_one(found, now))
            return 0
        actions = store.pending_list()
        if args.json:
            shown = [a for a in actions if args.all or state_of(a, now) != "expired"]
            print(json.dumps([pending_doc(a, now) for a in shown], indent=2, ensure_ascii=False))
            return 0
        print(render_pending(actions, now, terminal_width(), shown_expired=args.all, approved=_approved_by(store)))
        return 0
    finally:
        store.close()


def _approved_by(store: Any) -> dict[str, list[str]]:
    """Approvers who approved each action so far (for the exact call), or nothing before any approval."""
    from safe_mcp.errors import StateError

    try:
        rows = store.query("SELECT a.action_id, a.approver FROM approvals a JOIN pending p ON p.id = a.action_id "
                           "AND p.digest = a.digest WHERE a.decision = 'approve' ORDER BY a.time")
    except StateError:  # no approval was ever given: the table is created with the first approver
        return {}
    out: dict[str, list[str]] = {}
    for action_id, approver in rows:
        out.setdefault(str(action_id), []).append(str(approver))
    return out


def _checked_config_path(args: argparse.Namespace) -> Path:
    """The config a client will be pointed at, loaded first: a client that starts safe-mcp with a missing
    or broken config only shows the user a server that failed to start."""
    config_of(args)
    return config_path_of(args).resolve()


def cmd_client_config(args: argparse.Namespace) -> int:
    from safe_mcp.faces.cli_clients import UNIX_SCHEMES, client_entry
    from safe_mcp.faces.connect import unix_socket_of

    path = config_path_of(args).resolve() if args.url and not args.config else _checked_config_path(args)
    if args.url and not args.url.startswith(("http://", "https://", *UNIX_SCHEMES)):
        print(f"safe-mcp: --url must be an http://, https:// or unix:// URL, not {args.url!r}", file=sys.stderr)
        return 2
    if args.url:
        unix_socket_of(args.url)  # a malformed unix:// URL is refused here, not by the client later
    doc, notes = client_entry(args.client, path, args.url)
    print(json.dumps(doc, indent=2))
    for note in notes:
        print(f"# {note}", file=sys.stderr)
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from importlib.metadata import version

    from safe_mcp.faces.cli_clients import write_bundle

    path = _checked_config_path(args)
    out = Path(args.out)
    write_bundle(out, path, version("safe-mcp"))
    print(f"wrote {out}: open it with Claude Desktop (double-click, or Settings > Extensions) to install safe-mcp; "
          f"it starts {sys.executable} with {path} (changeable in the extension's settings)")
    return 0


def cmd_secrets(args: argparse.Namespace) -> int:
    import getpass

    if args.action == "check":
        from safe_mcp.faces.cli_lockdown import secrets_check

        return secrets_check(config_of(args))
    if args.file or os.environ.get("SAFE_MCP_SECRETS_FILE"):
        from safe_mcp.trust.secretstore import store_secret

        value = getpass.getpass(f"secret for {args.name}: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        where = store_secret(args.name, value, args.file)
        print(f'stored in {where}; reference it as "keyring:{args.name}" (set SAFE_MCP_SECRETS_FILE={where} where it runs)')
        return 0

    import keyring
    import keyring.errors

    from safe_mcp.trust.secrets import KEYRING_SERVICE

    value = getpass.getpass(f"secret for {args.name}: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not value:
        print("safe-mcp: empty secret, nothing stored", file=sys.stderr)
        return 2
    try:
        keyring.set_password(KEYRING_SERVICE, args.name, value)
    except keyring.errors.KeyringError as exc:
        print(f"safe-mcp: no usable keyring backend ({exc}); use an env:VAR reference instead", file=sys.stderr)
        return 1
    print(f'stored; reference it as "keyring:{args.name}"')
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    from safe_mcp.trust.schema import config_schema

    print(json.dumps(config_schema(), indent=2, sort_keys=True))
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    from safe_mcp.adapter import Call
    from safe_mcp.gate.pipeline import Caller

    rt = runtime_of(args)
    who = Caller(session=rt.session, client="safe-mcp-cli")
    try:
        if args.action == "list":
            mail = [n for n, t in rt.config.targets.items() if "email_outbox" in t.spec.tools]
            from safe_mcp.faces.cli_table import table, terminal_width

            for name in mail:
                r = rt.gate.run(Call(target=name, tool="email_outbox"), who)
                print(f"target {name}: {r.message}")
                messages = r.result.get("messages", [])
                if messages:
                    print(table(["message", "status", "leaves / left", "to", "subject"],
                                [[m["id"], m["status"] + (f" ({m['last_error']})" if m.get("last_error") else ""),
                                  m.get("leaves_at") or m.get("finished_at") or "", ", ".join(m.get("to") or []),
                                  repr(m.get("subject"))] for m in messages], width=terminal_width(), indent="  "))
            if not mail:
                print("no mail targets in this config")
            return 0
        receipt_id = args.id if args.id.startswith("rcpt_") else _send_receipt(rt, args.id)
        if receipt_id is None:
            print(f"safe-mcp: no email_send receipt names message {args.id!r}", file=sys.stderr)
            return 1
        r = rt.gate.undo(receipt_id, who)
        print(f"{r.message} (receipt {r.receipt_id})")
        return 0
    finally:
        rt.close()


def _send_receipt(rt: Runtime, outbox_id: str) -> str | None:
    """The receipt of the email_send that queued `outbox_id` (its compensation names the message)."""
    for _seq, rid, body, _digest in rt.store.iter_receipts():
        doc = json.loads(body)
        if doc.get("tool") == "email_send" and doc.get("compensation_id"):
            comp = rt.store.compensation_for(rid)
            if comp is not None and comp[2].get("outbox_id") == outbox_id:
                return rid
    return None


def cmd_approver(args: argparse.Namespace) -> int:
    rt = runtime_of(args)
    try:
        if args.action == "list":
            names = rt.gate.approvals.approvers.names()
            print("\n".join(names) if names else "no approvers enrolled")
            return 0
        import segno

        _secret, uri, where = rt.gate.approvals.approvers.add(args.name)
        print(f"approver {args.name!r} enrolled; scan this with an authenticator app (RFC 6238 TOTP):")
        segno.make(uri).terminal(compact=True)
        print(uri)
        print(f"the secret is stored encrypted in the state store; its key is in: {where}")
        return 0
    finally:
        rt.close()


def cmd_decide(args: argparse.Namespace) -> int:
    import getpass

    code = getpass.getpass(f"current code of {args.approver}: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    rt = runtime_of(args, session="approvals")
    try:
        result = rt.gate.approvals.decide(args.action_id, args.approver, code, "cli", args.command == "approve",
                                          getattr(args, "reason", ""))
        print(f"{result.message} (receipt {result.receipt_id})")
        return 0
    finally:
        rt.close()


_COMMANDS = {
    "approve": cmd_decide, "deny": cmd_decide, "approver": cmd_approver,
    "serve": cmd_serve, "demo": cmd_demo, "check": cmd_check, "receipts": cmd_receipts, "undo": cmd_undo,
    "pending": cmd_pending, "breaker": cmd_breaker,
    "gameday": cmd_gameday, "client-config": cmd_client_config, "bundle": cmd_bundle, "secrets": cmd_secrets,
    "connect": cmd_connect,
    "config-schema": cmd_config_schema, "outbox": cmd_outbox, "reconcile": cmd_reconcile, "state": cmd_state,
    **LOCKDOWN_COMMANDS,
}
