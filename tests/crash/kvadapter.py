"""A small real adapter for crash tests: a key-value table in a SQLite file, journaled like the SQL adapters.

`CRASH_AT` in the environment makes `execute` kill its own process with SIGKILL at that point
("before_commit" or "after_commit"), the way a kill -9 lands in a real server.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections.abc import Mapping
from typing import Any

from safe_mcp.adapter import Adapter, AdapterSettings, Budget, Call, Classification, Outcome, Preview, Reconciled
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError


class KvSettings(AdapterSettings):
    path: str
    journal: bool = True


class KvAdapter(Adapter):
    kind = "kv"
    settings_model = KvSettings
    tools = frozenset({"sql_execute"})

    @property
    def _journal(self) -> bool:
        return bool(self.settings.journal)  # type: ignore[attr-defined]

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.settings.path, isolation_level=None)  # type: ignore[attr-defined]
        db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS journal (intent TEXT PRIMARY KEY, comp TEXT)")
        return db

    def classify(self, call: Call) -> Classification:
        return Classification(effect=Effect.WRITE, reason="kv set", compensable=True)

    def preview(self, call: Call, classification: Classification, budget: Budget) -> Preview:
        return Preview(effect=classification.effect, affected=1)

    def execute(self, call: Call, classification: Classification, budget: Budget) -> Outcome:
        k, v = str(call.args["key"]), str(call.args["value"])
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        row = db.execute("SELECT v FROM kv WHERE k = ?", (k,)).fetchone()
        comp = {"key": k, "before": row[0] if row else None, "after": v, "affected": 1}
        db.execute("INSERT INTO kv VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", (k, v))
        if self._journal:
            db.execute("INSERT INTO journal VALUES (?, ?)", (budget.intent_id, json.dumps(comp)))
        if os.environ.get("CRASH_AT") == "before_commit":
            os.kill(os.getpid(), signal.SIGKILL)
        db.execute("COMMIT")
        if os.environ.get("CRASH_AT") == "after_commit":
            os.kill(os.getpid(), signal.SIGKILL)
        return Outcome(result={"set": k}, affected=1, compensation=comp)

    def compensate(self, compensation: Mapping[str, Any], budget: Budget) -> Outcome:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        row = db.execute("SELECT v FROM kv WHERE k = ?", (compensation["key"],)).fetchone()
        if (row[0] if row else None) != compensation["after"]:
            db.execute("ROLLBACK")
            raise AdapterError(f"key {compensation['key']!r} changed since the write; undo would destroy newer data")
        if compensation["before"] is None:
            db.execute("DELETE FROM kv WHERE k = ?", (compensation["key"],))
        else:
            db.execute("UPDATE kv SET v = ? WHERE k = ?", (compensation["before"], compensation["key"]))
        db.execute("COMMIT")
        return Outcome(affected=1)

    def reconcile(self, intent_id: str, call: Call) -> Reconciled:
        if not self._journal:
            return super().reconcile(intent_id, call)
        row = self._db().execute("SELECT comp FROM journal WHERE intent = ?", (intent_id,)).fetchone()
        if row is None:
            return Reconciled(state="not_executed")
        comp = json.loads(row[0])
        return Reconciled(state="executed", outcome=Outcome(affected=1, compensation=comp, result={"set": comp["key"]}))
