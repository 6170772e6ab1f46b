"""Command hooks (`run = [argv]`): run directly, never through a shell, with `{table}` and `{artifact}`
given as single arguments; a failing required command stops the statement. Checked in the database
file and in what the command itself recorded."""

from __future__ import annotations

import json
import sqlite3
import stat
import sys
from contextlib import closing
from pathlib import Path

import pytest
from hook_helpers import ORDERS, hooked_runtime, receipts, rows, shop_config, sql

from safe_mcp.errors import Refused
from safe_mcp.gate.calls import Caller

RECORD = str(Path(__file__).parent / "bin" / "record_argv.py")


def command_config(tmp_path: Path, run: list[str], *, restore: list[str] | None = None, required: bool = True,
                   before: str = '["DELETE", "DROP TABLE"]') -> Path:
    extra = f"restore = {json.dumps(restore)}\n" if restore else ""
    return shop_config(tmp_path, f"""
        [[targets.shop.hooks]]
        before = {before}
        run = {json.dumps(run)}
        required = {str(required).lower()}
        timeout_s = 20
        {extra}""")


def test_table_and_artifact_are_whole_arguments_and_the_artifact_is_private(tmp_path: Path) -> None:
    cfg = command_config(tmp_path, [sys.executable, RECORD, "--table", "{table}", "--out", "{artifact}"])
    with hooked_runtime(cfg) as rt:
        done = sql(rt, "DELETE FROM orders WHERE id = 2")
        comp = rt.store.compensation_for(done.receipt_id)
        assert comp is not None
        [hook] = comp[2]["hooks"]
    artifact = Path(hook["artifact"])
    assert json.loads(artifact.read_text()) == ["--table", "orders", "--out", str(artifact)]
    assert artifact.parent == tmp_path / ".safe-mcp" / "artifacts"
    assert stat.S_IMODE(artifact.stat().st_mode) == 0o600
    assert rows(tmp_path / "shop.db") == [ORDERS[0], ORDERS[2]]


@pytest.mark.parametrize("item", ["{table}{artifact}", "-t={table}", "--file={artifact}", "x{table}"])
def test_placeholders_inside_an_argument_are_refused_at_load(tmp_path: Path, item: str) -> None:
    from safe_mcp.errors import ConfigError
    from safe_mcp.trust.config import load_config

    cfg = command_config(tmp_path, [sys.executable, RECORD, item])
    with pytest.raises(ConfigError, match="whole argv items"):
        load_config(cfg)


@pytest.mark.parametrize("name", ["x; touch pwned", "$(touch pwned)", "-rf", "a b", "../../etc/passwd", "t`id`"])
def test_a_table_name_that_is_not_an_identifier_is_never_passed(tmp_path: Path, name: str) -> None:
    cfg = command_config(tmp_path, [sys.executable, RECORD, "{table}", "--log", str(tmp_path / "calls.log")])
    db = tmp_path / "shop.db"
    quoted = '"' + name.replace('"', '""') + '"'
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(f"CREATE TABLE {quoted} (id INTEGER PRIMARY KEY)")
        conn.execute(f"INSERT INTO {quoted} VALUES (1)")
    with hooked_runtime(cfg) as rt, pytest.raises(Refused, match="not a plain identifier"):
        sql(rt, f"DELETE FROM {quoted}")
    assert not (tmp_path / "calls.log").exists(), "the command never ran"
    assert not list(tmp_path.rglob("pwned"))
    assert rows(db, name) == [(1,)]


def test_a_required_command_that_exits_non_zero_stops_the_drop(tmp_path: Path) -> None:
    cfg = command_config(tmp_path, [sys.executable, RECORD, "--exit", "3"])
    with hooked_runtime(cfg) as rt:
        with pytest.raises(Refused) as refused:
            sql(rt, "DROP TABLE orders")
        assert "exited with status 3" in refused.value.reason and "disk full" in refused.value.reason
        assert rt.store.open_intents() == []
        assert any(r.tool == f"hook {Path(sys.executable).name}" and r.outcome == "hook_failed" for r in receipts(rt))
    assert rows(tmp_path / "shop.db") == ORDERS


def test_a_missing_program_stops_the_statement(tmp_path: Path) -> None:
    cfg = command_config(tmp_path, ["./no-such-dump-tool", "{artifact}"])
    with hooked_runtime(cfg) as rt, pytest.raises(Refused, match="cannot run"):
        sql(rt, "DELETE FROM orders")
    assert rows(tmp_path / "shop.db") == ORDERS


def test_a_command_that_writes_no_artifact_has_failed(tmp_path: Path) -> None:
    cfg = command_config(tmp_path, [sys.executable, "-c", "pass", "{artifact}"])
    with hooked_runtime(cfg) as rt, pytest.raises(Refused, match="left no artifact"):
        sql(rt, "DELETE FROM orders")
    assert rows(tmp_path / "shop.db") == ORDERS


def test_an_optional_failing_command_lets_the_statement_run(tmp_path: Path) -> None:
    cfg = command_config(tmp_path, [sys.executable, RECORD, "--exit", "1"], required=False)
    with hooked_runtime(cfg) as rt:
        done = sql(rt, "DELETE FROM orders WHERE id = 1")
        assert "exited with status 1" in done.message
    assert rows(tmp_path / "shop.db") == ORDERS[1:]


def test_undo_runs_the_restore_command_with_the_artifact(tmp_path: Path) -> None:
    log = tmp_path / "restore.log"
    cfg = command_config(tmp_path, [sys.executable, RECORD, "--out", "{artifact}"],
                         restore=[sys.executable, RECORD, "--from", "{artifact}", "--table", "{table}", "--log", str(log)])
    with hooked_runtime(cfg) as rt:
        done = sql(rt, "DELETE FROM orders WHERE id = 3")
        artifact = rt.store.compensation_for(done.receipt_id)[2]["hooks"][0]["artifact"]  # type: ignore[index]
        undone = rt.gate.undo(done.receipt_id, Caller(session="sess-undo"))
        assert "restored from" in undone.message
    assert json.loads(log.read_text()) == ["--from", artifact, "--table", "orders", "--log", str(log)]
    assert rows(tmp_path / "shop.db") == ORDERS, "the adapter's own undo ran first"


def test_undo_without_a_restore_command_names_the_artifact(tmp_path: Path) -> None:
    cfg = command_config(tmp_path, [sys.executable, RECORD, "--out", "{artifact}"])
    with hooked_runtime(cfg) as rt:
        done = sql(rt, "DELETE FROM orders WHERE id = 3")
        undone = rt.gate.undo(done.receipt_id, Caller(session="sess-undo"))
        assert "cannot restore by itself" in undone.message and "restore by hand from the artifact" in undone.message
    assert rows(tmp_path / "shop.db") == ORDERS
