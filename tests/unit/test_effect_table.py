"""The gate enforces the effect table: `write` and `destructive` mean an undo will be recorded.

A state change the adapter will not record a compensation for runs as `irreversible` (a human by
default), decided before anything runs; an adapter that promises a compensation and returns none is
receipted as a contract breach and counts against the breaker. Proven with a real adapter (a file of
lines) whose promises the test controls, checking the file after each call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from support import write_config

import safe_mcp.registry
from safe_mcp.adapter import Adapter, AdapterSettings, Budget, Call, Classification, Outcome, Preview
from safe_mcp.effects import Effect
from safe_mcp.errors import Drifted, Refused
from safe_mcp.gate.pipeline import Caller
from safe_mcp.gate.runtime import Runtime
from safe_mcp.trust.config import load_config

# A target of this name breaches the contract on purpose; the suite-wide breach check (conftest) spares it.
BREACH_ON_PURPOSE = "breach_probe"


class LinesSettings(AdapterSettings):
    path: str
    promise: bool = True
    """classify says compensable"""
    keep: bool = True
    """execute returns the compensation"""


class LinesAdapter(Adapter):
    kind = "lines"
    settings_model = LinesSettings
    tools = frozenset({"sql_execute"})

    def classify(self, call: Call) -> Classification:
        effect = Effect(call.args.get("effect", "write"))
        return Classification(effect=effect, reason="append a line", compensable=self.settings.promise)  # type: ignore[attr-defined]

    def _before(self) -> str:
        path = Path(self.settings.path)  # type: ignore[attr-defined]
        return path.read_text() if path.exists() else ""

    def preview(self, call: Call, classification: Classification, budget: Budget) -> Preview:
        # The items a write would change: here, the whole file as it is now.
        return Preview(effect=classification.effect, affected=1, fingerprint=str(hash(self._before())))

    def execute(self, call: Call, classification: Classification, budget: Budget) -> Outcome:
        path = Path(self.settings.path)  # type: ignore[attr-defined]
        before = self._before()
        if budget.expect is not None and budget.expect.fingerprint != str(hash(before)):
            raise Drifted(classification.effect, "the file changed since the preview",
                          self.preview(call, classification, budget))
        path.write_text(before + str(call.args["sql"]) + "\n")
        comp = {"before": before} if self.settings.keep else None  # type: ignore[attr-defined]
        return Outcome(affected=1, compensation=comp)

    def compensate(self, compensation: Mapping[str, Any], budget: Budget) -> Outcome:
        Path(self.settings.path).write_text(str(compensation["before"]))  # type: ignore[attr-defined]
        return Outcome(affected=1)


@pytest.fixture(autouse=True)
def lines_adapter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real = safe_mcp.registry.load_adapter
    monkeypatch.setattr(safe_mcp.registry, "load_adapter",
                        lambda kind, **kw: LinesAdapter if kind == "lines" else real(kind, **kw))
    yield


def _runtime(tmp_path: Path, name: str = "t", **settings: bool) -> Runtime:
    extra = "".join(f"{k} = {'true' if v else 'false'}\n" for k, v in settings.items())
    cfg = write_config(tmp_path, f'[targets.{name}]\nkind = "lines"\npath = "{tmp_path / "lines.txt"}"\n'
                                 f'access = "read-write"\n{extra}[breaker]\nfailures = 2\n'
                                 f'[state]\npath = "{tmp_path / "state"}"\n')
    return Runtime(load_config(cfg))


def _lines(tmp_path: Path) -> str:
    p = tmp_path / "lines.txt"
    return p.read_text() if p.exists() else ""


@pytest.mark.parametrize("effect", ["write", "destructive"])
def test_a_change_without_a_recorded_undo_is_irreversible_and_waits_for_a_human(tmp_path: Path, effect: str) -> None:
    rt = _runtime(tmp_path, promise=False)
    try:
        r = rt.gate.run(Call(target="t", tool="sql_execute", args={"sql": "x", "effect": effect}), Caller(session="s"))
        assert r.status == "pending" and r.effect == "irreversible"
        assert r.pending is not None and r.pending.confirm_by == "human"
        assert "no undo would be recorded" in r.message
        assert _lines(tmp_path) == ""  # nothing ran
    finally:
        rt.close()


def test_a_compensable_write_runs_and_can_be_undone(tmp_path: Path) -> None:
    rt = _runtime(tmp_path)
    try:
        r = rt.gate.run(Call(target="t", tool="sql_execute", args={"sql": "x"}), Caller(session="s"))
        assert r.status == "ok" and r.effect == "write" and r.undo
        assert _lines(tmp_path) == "x\n"
        rt.gate.undo(r.receipt_id, Caller(session="s"))
        assert _lines(tmp_path) == ""
    finally:
        rt.close()


def test_a_compensable_write_that_records_no_undo_is_a_receipted_breach_that_trips_the_breaker(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, name=BREACH_ON_PURPOSE, keep=False)
    caller = Caller(session="s")
    try:
        first = rt.gate.run(Call(target=BREACH_ON_PURPOSE, tool="sql_execute", args={"sql": "a"}), caller)
        assert first.undo is None and "no undo is recorded" in first.message
        receipt = rt.store.receipt(first.receipt_id)
        assert receipt is not None and receipt.reason.startswith("contract breach")
        rt.gate.run(Call(target=BREACH_ON_PURPOSE, tool="sql_execute", args={"sql": "b"}), caller)
        # Two breaches (failures = 2) trip the breaker: the third write is refused and the file unchanged.
        with pytest.raises(Refused, match="circuit breaker"):
            rt.gate.run(Call(target=BREACH_ON_PURPOSE, tool="sql_execute", args={"sql": "c"}), caller)
        assert _lines(tmp_path) == "a\nb\n"
    finally:
        rt.close()


def test_the_breaker_holds_for_the_principal_across_sessions_and_restarts(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, name=BREACH_ON_PURPOSE, keep=False)
    try:
        for sql in ("a", "b"):
            rt.gate.run(Call(target=BREACH_ON_PURPOSE, tool="sql_execute", args={"sql": sql}),
                        Caller(session="s1", principal="alice"))
    finally:
        rt.close()
    rt = _runtime(tmp_path, name=BREACH_ON_PURPOSE, keep=False)  # a restart
    try:
        with pytest.raises(Refused, match="circuit breaker for 'alice'"):
            rt.gate.run(Call(target=BREACH_ON_PURPOSE, tool="sql_execute", args={"sql": "c"}),
                        Caller(session="a-new-session", principal="alice"))
        # Another principal is not held by alice's breaker.
        ok = rt.gate.run(Call(target=BREACH_ON_PURPOSE, tool="sql_execute", args={"sql": "d"}),
                         Caller(session="s9", principal="bob"))
        assert ok.status == "ok"
        assert _lines(tmp_path) == "a\nb\nd\n"
        assert rt.store.reset_breakers("alice", None)
        again = rt.gate.run(Call(target=BREACH_ON_PURPOSE, tool="sql_execute", args={"sql": "e"}),
                            Caller(session="s10", principal="alice"))
        assert again.status == "ok"
    finally:
        rt.close()


def test_a_confirm_after_the_target_drifted_runs_nothing_and_returns_a_new_preview(tmp_path: Path) -> None:
    import time

    rt = _runtime(tmp_path)
    caller = Caller(session="s")
    try:
        (tmp_path / "lines.txt").write_text("old\n")
        pending = rt.gate.run(Call(target="t", tool="sql_execute", args={"sql": "x", "effect": "destructive"}), caller)
        assert pending.status == "pending" and pending.pending is not None
        (tmp_path / "lines.txt").write_text("old\nchanged by the application\n")
        time.sleep(rt.config.confirm.min_delay_s + 0.05)
        again = rt.gate.confirm(pending.pending.action_id, caller)
        assert again.status == "pending" and again.pending is not None
        assert again.pending.action_id != pending.pending.action_id
        assert "changed since the preview" in again.message
        assert _lines(tmp_path) == "old\nchanged by the application\n"  # nothing ran
        with pytest.raises(Refused, match="single use"):
            rt.gate.confirm(pending.pending.action_id, caller)
        time.sleep(rt.config.confirm.min_delay_s + 0.05)
        done = rt.gate.confirm(again.pending.action_id, caller)
        assert done.status == "ok"
        assert _lines(tmp_path) == "old\nchanged by the application\nx\n"
    finally:
        rt.close()
