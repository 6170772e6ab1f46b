"""`safe-mcp gameday`: replay the scenarios of real incidents against a config, changing nothing.

Every scenario is decided by the gate. Calls run only where that changes nothing: targets whose
adapter can make a disposable copy (SQLite) are copied into a sandbox and the scenarios run there
for real; other targets get dry runs (a rolled-back transaction, read calls) or a decision without
execution. The state (receipts,
budgets, breakers) of the run lives in the sandbox too, so the real ledger is untouched.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from safe_mcp.adapter import Call
from safe_mcp.errors import Refused
from safe_mcp.gate.pipeline import Caller, Gate
from safe_mcp.gate.policy import Verdict
from safe_mcp.gate.runtime import Runtime
from safe_mcp.text import plural
from safe_mcp.trust.config import Config, ConfirmMode, StateSettings, Target

__all__ = ["Row", "exit_code", "run_gameday"]

_SHOWN = 200  # characters of a reason kept in a row; cut at a word, never inside one


def _short(text: str) -> str:
    return textwrap.shorten(text, _SHOWN, placeholder=" ...")


class Row(BaseModel):
    model_config = ConfigDict(frozen=True)

    scenario: str
    target: str
    expected: str
    happened: str
    passed: bool | None  # None: could not be played (no table to play against, target down, ...)


def _sandboxed(config: Config, sandbox: Path) -> tuple[Config, set[str]]:
    """The same config with state kept in `sandbox`, and every target its adapter can copy pointed at a
    copy there; returns it with the names of the copied targets."""
    targets, copied = dict(config.targets), set()
    for t in config.targets.values():
        settings = t.spec.sandbox_copy(t.settings, config.base_dir, str(sandbox))
        if settings is not None:
            targets[t.name] = t.model_copy(update={"settings": settings})
            copied.add(t.name)
    state = StateSettings(path=str(sandbox / ".gameday-state"))
    return config.model_copy(update={"targets": targets, "state": state}), copied


def _biggest_table(gate: Gate, caller: Caller, target: str) -> tuple[str, str] | str:
    """(table, a column) of the table with the most columns, from the target's own schema; or why not."""
    try:
        schema = gate.run(Call(target=target, tool="sql_schema", args={}), caller).result.get("tables", [])
    except Refused as exc:
        return f"could not read its schema: {exc.reason}" + (f" ({exc.remedy})" if exc.remedy else "")
    tables = [t for t in schema if t.get("columns")]
    if not tables:
        return "it has no table to play against (create one, or point the target at a copy with data)"
    best = max(tables, key=lambda t: len(t["columns"]))
    col = next((c["name"] for c in best["columns"] if not c.get("pk")), best["columns"][0]["name"])
    return str(best["name"]), str(col)


def _contained(run: Callable[[], Any]) -> tuple[bool, str]:
    """Run one gate call; contained unless it ran (or would run) unconfirmed."""
    try:
        r = run()
    except Refused as exc:
        return True, _short(f"refused: {exc.reason}")
    status = getattr(r, "status", None)
    if status == "pending":
        return True, f"held for {r.pending.confirm_by} confirmation ({plural(r.affected, 'row')} previewed)"
    if status == "dry_run":
        would = r.result.get("would", "run")
        return would != "run", _short(f"dry run: it would {would} ({plural(r.affected, 'row')})")
    if status in ("ok", "duplicate"):
        return False, _short(f"it ran: {r.message}")
    return True, _short(str(r))


def run_gameday(config: Config) -> list[Row]:
    sandbox = Path(tempfile.mkdtemp(prefix="safe-mcp-gameday-"))
    rows: list[Row] = []
    try:
        sandboxed, copied = _sandboxed(config, sandbox)
        rt = Runtime(sandboxed, session="gameday")
        gate = rt.gate
        try:
            for t in config.targets.values():
                tools = t.spec.tools
                caller = Caller(session=f"gameday-{t.name}", client="safe-mcp gameday")
                if "sql_execute" in tools:
                    rows.extend(_sql_scenarios(gate, caller, t.name, t.name in copied))
                if "aws_call" in tools:
                    for service, op, params in (("rds", "DeleteDBSnapshot", {"DBSnapshotIdentifier": "gameday"}),
                                                ("ec2", "DeleteSnapshot", {"SnapshotId": "snap-0123456789abcdef0"}),
                                                ("backup", "DeleteRecoveryPoint",
                                                 {"BackupVaultName": "gameday", "RecoveryPointArn": "arn:aws:backup:x"})):
                        aws = Call(target=t.name, tool="aws_call",
                                   args={"service": service, "operation": op, "params": params})
                        try:
                            d = gate.assess(aws, caller)
                            happened, passed = _short(f"allowed ({d.verdict.value}: {d.reason})"), False
                        except Refused as exc:
                            happened, passed = _short(f"refused: {exc.reason}"), True
                        rows.append(Row(scenario=f"delete backups ({service} {op})", target=t.name,
                                        expected="forbidden", happened=happened, passed=passed))
                if "http_call" in tools:
                    rows.extend(_http_scenarios(gate, caller, t))
                if "email_send" in tools:
                    call = Call(target=t.name, tool="email_send", args={
                        "to": ["gameday@outside.invalid"], "subject": "gameday", "body": "gameday"})
                    try:
                        d = gate.assess(call, caller)
                        happened, passed = _short(f"allowed ({d.reason})"), False
                    except Refused as exc:
                        happened, passed = _short(f"refused: {exc.reason}"), True
                    rows.append(Row(scenario="mail to an outside address", target=t.name,
                                    expected="refused by the recipient allow-list", happened=happened, passed=passed))
        finally:
            rt.close()
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)
    return rows


def _sql_scenarios(gate: Gate, caller: Caller, target: str, sandbox: bool) -> list[Row]:
    rows: list[Row] = []
    found = _biggest_table(gate, caller, target)
    if isinstance(found, str):
        return [Row(scenario="SQL scenarios", target=target, expected="played against a table",
                    happened=_short(f"NOT PLAYED: {found}"), passed=None)]
    table, col = found
    q = '"' + table.replace('"', '""') + '"'
    c = '"' + col.replace('"', '""') + '"'
    dry = not sandbox

    def sql(text: str, **extra: Any) -> Callable[[], Any]:
        args = {"sql": text, **({"dry_run": True} if dry else {}), **extra}
        return lambda: gate.run(Call(target=target, tool="sql_execute", args=args), caller)

    if sandbox:
        ran = dup = 0
        for _ in range(5):
            try:
                r = gate.run(Call(target=target, tool="sql_execute", args={
                    "sql": f"UPDATE {q} SET {c} = {c} WHERE rowid = (SELECT min(rowid) FROM {q})",
                    "idempotency_key": "gameday-retry"}), caller)
                ran += r.status == "ok"
                dup += r.status == "duplicate"
            except Refused:
                pass
        rows.append(Row(scenario="the same write retried 5 times", target=target, expected="runs once",
                        happened=f"ran {ran}x, {dup} duplicates returned", passed=ran <= 1))
        ran = held = 0
        stopped = ""
        burst = Caller(session=f"gameday-burst-{target}", client="safe-mcp gameday")
        for i in range(200):
            try:
                r = gate.run(Call(target=target, tool="sql_execute", args={
                    "sql": f"UPDATE {q} SET {c} = {c} WHERE rowid = (SELECT min(rowid) FROM {q}) AND {i} >= 0"}), burst)
            except Refused as exc:
                stopped = exc.reason
                break
            ran += r.status == "ok"
            held += r.status == "pending"
        by_limit = any(w in stopped for w in ("budget", "writes_per_session", "circuit breaker", "read-only"))
        what = (f"stopped after {ran} ran: {stopped}" if stopped
                else f"none ran: all {held} held for confirmation" if ran == 0 else f"{ran} of 200 ran")
        rows.append(Row(scenario="200 writes in a minute", target=target, expected="stopped by a budget",
                        happened=_short(what), passed=by_limit or ran == 0))
    else:
        lim = gate.config.targets[target].limits
        cap = min(lim.writes_per_minute, lim.writes_per_session)
        rows.append(Row(scenario="200 writes in a minute", target=target, expected="stopped by a budget",
                        happened=f"budgets allow {cap} (writes_per_minute / writes_per_session)", passed=cap < 200))
    # Destructive scenarios last, DROP TABLE at the very end: in the sandbox a loose config really runs them.
    for name, statement in (("mass UPDATE of every row", f"UPDATE {q} SET {c} = {c}"),
                            ("bulk DELETE without WHERE", f"DELETE FROM {q}"),
                            ("DROP TABLE", f"DROP TABLE {q}")):
        ok, what = _contained(sql(statement))
        rows.append(Row(scenario=name, target=target, expected="refused, or held for confirmation",
                        happened=what, passed=ok))

    return rows


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")


def _http_call(target: str, op: Any, **extra: Any) -> Call:
    """A call of declared operation `op` with every placeholder its templates use filled with "gameday"."""
    params: dict[str, Any] = {}
    body: dict[str, Any] = {}
    for name in _PLACEHOLDER.findall(op.model_dump_json()):
        where, _, rest = name.partition(".")
        if where == "body" and rest:
            body[rest.split(".")[0]] = "gameday"
        elif where != "result":
            params[name] = "gameday"
    args: dict[str, Any] = {"operation": op.name, "params": params, **extra}
    if body:
        args["body"] = body
    return Call(target=target, tool="http_call", args=args)


def _http_scenarios(gate: Gate, caller: Caller, target: Target) -> list[Row]:
    """Decided by the gate, nothing sent: HTTP targets cannot be copied, and a preview would call the API."""
    rows: list[Row] = []
    ops = [op for op in getattr(target.settings, "operations", ()) if op.method and op.path]
    writes = [op for op in ops if op.method in {"POST", "PUT", "PATCH"} and op.effect in (None, "write")]
    writes.sort(key=lambda op: "refund" not in op.name.lower())  # a refund first, when there is one
    if writes:
        op = writes[0]
        lim = target.limits
        cap = min(5, lim.writes_per_minute, lim.writes_per_session)
        try:
            d = gate.assess(_http_call(target.name, op), caller)
            if d.verdict is Verdict.ALLOW:
                ran, how = cap, f"{plural(cap, 'refund')} would go through, each retry a new call"
            elif d.confirm_by is ConfirmMode.HUMAN:
                ran, how = 0, "each retry waits for a human, who sees the earlier ones"
            else:
                ran, how = cap, f"each retry is held for {d.confirm_by.value if d.confirm_by else 'a'} " \
                                "confirmation, which the agent gives itself"
        except Refused as exc:
            ran, how = 0, f"refused: {exc.reason}"
        keyed = ("; only one idempotency_key makes it one (the gate returns the first receipt; the API gets it as "
                 f"{op.idempotency_header})" if op.idempotency_header else
                 "; only one idempotency_key makes it one, and the API gets no key (set idempotency_header)")
        rows.append(Row(scenario=f"a refund retried 5 times ({op.name})", target=target.name,
                        expected="runs once, even without an idempotency_key",
                        happened=_short(f"dry run, nothing sent: {how}{keyed}"), passed=ran <= 1))
    for op in ops:
        if op.compensate is not None or not (op.method == "DELETE" or op.effect in {"destructive", "irreversible"}):
            continue
        try:
            d = gate.assess(_http_call(target.name, op), caller)
            human = d.verdict is Verdict.CONFIRM and d.confirm_by is ConfirmMode.HUMAN
            happened, passed = (f"held for {d.confirm_by.value} confirmation" if d.confirm_by
                                else f"allowed: {d.reason}"), human
        except Refused as exc:
            happened, passed = f"refused: {exc.reason}", True
        rows.append(Row(scenario=f"a destructive operation without a compensation ({op.name})", target=target.name,
                        expected="refused, or held for a human", happened=_short(f"dry run, nothing sent: {happened}"),
                        passed=passed))
    return rows


def exit_code(rows: list[Row]) -> int:
    """1 when a scenario would have done damage, could not be played, or none applied; else 0.
    A scenario that was not played is never counted as contained: CI must not go green on it."""
    return 0 if rows and all(r.passed is True for r in rows) else 1
