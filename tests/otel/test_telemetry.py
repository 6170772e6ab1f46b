"""OpenTelemetry end to end: safe-mcp served over stdio and HTTP, exporting to a real OTLP/HTTP receiver on loopback.

Every call's span must carry the gate's verdict and match the receipt in the ledger; every receipt must arrive as a
log record in that span's trace; a caller's `traceparent` (in `_meta` or an HTTP header) must parent the span.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from support import connect, create_token, ledger_rows, serving, write_config

pytestmark = pytest.mark.anyio

AUTH = "Bearer otlp-" + secrets.token_hex(8)  # the receiver's credential: sent as a header, never stored


@dataclass
class Receiver:
    """A real OTLP/HTTP receiver: protobuf bodies POSTed to /v1/traces and /v1/logs, decoded as they arrive."""

    url: str
    spans: list[dict[str, Any]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)

    def wait(self, spans: int, logs: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (len(self.spans) < spans or len(self.logs) < logs):
            time.sleep(0.05)
        assert len(self.spans) >= spans and len(self.logs) >= logs, (self.spans, self.logs)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    state: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            rec = state[0]
            rec.auth.append(self.headers.get("Authorization", ""))
            assert self.headers.get("Content-Type") == "application/x-protobuf"
            if self.path == "/v1/traces":
                req = ExportTraceServiceRequest.FromString(body)
                for rs in req.resource_spans:
                    service = {a.key: _value(a.value) for a in rs.resource.attributes}["service.name"]
                    for ss in rs.scope_spans:
                        rec.spans.extend({"name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                                          "parent": s.parent_span_id.hex(), "status": s.status.code, "kind": s.kind,
                                          "service": service, "start": s.start_time_unix_nano,
                                          "end": s.end_time_unix_nano,
                                          "attrs": {a.key: _value(a.value) for a in s.attributes}} for s in ss.spans)
            elif self.path == "/v1/logs":
                req = ExportLogsServiceRequest.FromString(body)
                for rl in req.resource_logs:
                    for sl in rl.scope_logs:
                        rec.logs.extend({"trace_id": r.trace_id.hex(), "span_id": r.span_id.hex(),
                                         "body": json.loads(r.body.string_value), "event": r.event_name,
                                         "attrs": {a.key: _value(a.value) for a in r.attributes}}
                                        for r in sl.log_records)
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.append(Receiver(url=f"http://127.0.0.1:{httpd.server_address[1]}"))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state[0]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def make_config(tmp_path: Path, endpoint: str) -> Path:
    with sqlite3.connect(tmp_path / "shop.db") as db:
        db.executescript("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);"
                         "INSERT INTO items (name) VALUES ('a'), ('b'), ('c');")
    return write_config(tmp_path, f"""
        [targets.shop]
        kind = "sqlite"
        path = "shop.db"
        access = "read-write"

        [targets.ro]
        kind = "sqlite"
        path = "shop.db"

        [telemetry]
        otlp_endpoint = "{endpoint}"
        service_name = "safe-mcp-test"
        headers = {{authorization = "env:OTLP_TEST_AUTH", x-tenant = "team-a"}}
        """)


@asynccontextmanager
async def client_for(cfg: Path, transport: str, traceparent: str) -> AsyncIterator[Client]:
    env = {"OTLP_TEST_AUTH": AUTH}
    if transport == "stdio":
        async with connect(cfg, "stdio", env=env) as client:
            yield client
        return
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    with serving(cfg, "http", env=env) as port:
        bearer = create_token(cfg, env=env)
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {bearer}", "traceparent": traceparent}) as http, \
                Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)) as client:
            yield client


# Where the caller's trace context travels: MCP's `_meta` (any transport) or the HTTP request's header.
CASES = [("stdio", "meta"), ("http", "header"), ("http", "meta")]


@pytest.mark.parametrize(("transport", "carrier"), CASES)
async def test_calls_become_spans_and_receipts_become_log_records(tmp_path: Path, transport: str, carrier: str) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{parent_id}-01"
    # With the header as carrier, _meta carries nothing; with _meta, the header (if any) is absent.
    meta = {"traceparent": traceparent} if carrier == "meta" else None
    with otlp_receiver() as receiver:
        cfg = make_config(tmp_path, receiver.url)
        async with client_for(cfg, transport, traceparent if carrier == "header" else "") as client:
            read = await client.call_tool("sql_query", {"target": "shop", "sql": "SELECT * FROM items"}, meta=meta)
            write = await client.call_tool("sql_execute", {"target": "shop", "sql": "INSERT INTO items (name) VALUES ('d')"},
                                           meta=meta)
            refused = await client.call_tool("sql_execute", {"target": "ro", "sql": "DELETE FROM items"}, meta=meta)
            listing = await client.call_tool("targets", {}, meta=meta)
        receiver.wait(spans=4, logs=3)

    assert not read.is_error and not write.is_error and not listing.is_error and refused.is_error
    assert read.structured_content and write.structured_content
    ids = {"read": read.structured_content["receipt_id"], "write": write.structured_content["receipt_id"]}
    refused_text = refused.content[0].text
    ids["refused"] = refused_text.rsplit("receipt: ", 1)[1].strip().rstrip(".")

    # The real state: the write ran, the refused delete did not; the ledger holds the three receipts.
    with sqlite3.connect(tmp_path / "shop.db") as db:
        assert [r[0] for r in db.execute("SELECT name FROM items ORDER BY id")] == ["a", "b", "c", "d"]
    ledger = {str(rid): json.loads(str(body)) for rid, body in ledger_rows(
        cfg, "SELECT id, body FROM receipts WHERE id IN (?, ?, ?)", (ids["read"], ids["write"], ids["refused"]))}
    assert set(ledger) == set(ids.values())

    spans = {s["attrs"].get("safe_mcp.receipt_id", "none"): s for s in receiver.spans}
    assert len(receiver.spans) == 4, receiver.spans
    expected = {"read": ("sql_query", 3), "write": ("sql_execute", 1), "refused": ("sql_execute", None)}
    for what, (tool, rows) in expected.items():
        span, receipt = spans[ids[what]], ledger[ids[what]]
        assert span["name"] == f"tools/call {tool}" and span["service"] == "safe-mcp-test"
        assert span["kind"] == 2  # SERVER
        attrs = span["attrs"]
        assert attrs["gen_ai.tool.name"] == tool and attrs["mcp.method.name"] == "tools/call"
        for key in ("target", "tool", "effect", "decision", "outcome"):
            assert attrs[f"safe_mcp.{key}"] == receipt[key], (what, key, attrs)
        assert attrs.get("safe_mcp.rows") == rows
        assert span["status"] == (2 if what == "refused" else 0)  # ERROR for the refusal, UNSET otherwise
        assert span["start"] < span["end"]
        # Every call in this session carried the caller's trace context: each span is a child of it.
        assert (span["trace_id"], span["parent"]) == (trace_id, parent_id)
    assert spans[ids["read"]]["attrs"]["safe_mcp.status"] == "ok"
    assert spans[ids["refused"]]["attrs"]["safe_mcp.status"] == "refused"
    assert spans[ids["refused"]]["attrs"]["safe_mcp.target"] == "ro"
    # The call with no receipt (the targets listing) is a span too, in the same trace, without gate attributes.
    assert spans["none"]["name"] == "tools/call targets" and spans["none"]["trace_id"] == trace_id

    logs = {r["attrs"]["safe_mcp.receipt_id"]: r for r in receiver.logs}
    assert set(logs) == set(ids.values()), receiver.logs
    for rid, record in logs.items():
        receipt = ledger[rid]
        assert record["event"] == "safe_mcp.receipt"
        assert {k: v for k, v in record["body"].items() if k != "hash"} == receipt
        assert record["attrs"]["safe_mcp.outcome"] == receipt["outcome"]
        assert record["attrs"]["safe_mcp.decision"] == receipt["decision"]
        # The log record sits in the span of its call.
        assert (record["trace_id"], record["span_id"]) == (spans[rid]["trace_id"], spans[rid]["span_id"])

    # The header from the config reached the receiver, resolved; the secret is nowhere in the state or config.
    assert receiver.auth and set(receiver.auth) == {AUTH}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert AUTH.encode() not in path.read_bytes(), path


async def test_a_client_leaving_after_a_burst_still_gets_every_call_exported(tmp_path: Path) -> None:
    with otlp_receiver() as receiver:
        cfg = make_config(tmp_path, receiver.url)
        async with connect(cfg, "stdio", env={"OTLP_TEST_AUTH": AUTH}) as client:
            results = [await client.call_tool("sql_query", {"target": "shop", "sql": f"SELECT {i}"}) for i in range(40)]
        receiver.wait(spans=40, logs=40)
    sent = {str(r.structured_content["receipt_id"]) for r in results if r.structured_content}
    assert len(sent) == 40
    assert {r["attrs"]["safe_mcp.receipt_id"] for r in receiver.logs} == sent
    assert {s["attrs"]["safe_mcp.receipt_id"] for s in receiver.spans} == sent


def test_close_finishes_every_call_handed_over_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker may lag the calls (that is the point: export is off the request path); closing must drain it.

    Calls are handed over faster than a receipt can be read, so the worker is far behind when `close` runs.
    """
    from safe_mcp.adapter import Call
    from safe_mcp.faces.telemetry import Telemetry, note_result
    from safe_mcp.gate.calls import Caller
    from safe_mcp.gate.runtime import Runtime
    from safe_mcp.trust.config import load_config

    with otlp_receiver() as receiver:
        cfg = make_config(tmp_path, receiver.url)
        monkeypatch.setenv("OTLP_TEST_AUTH", AUTH)
        runtime = Runtime(load_config(cfg))
        try:
            who = Caller(session="burst")
            results = [runtime.gate.run(Call(target="shop", tool="sql_query", args={"sql": f"SELECT {i}"}), who)
                       for i in range(60)]
            telemetry = Telemetry(runtime.config.telemetry, source=str(cfg), version="test",
                                  receipt=runtime.store.receipt, scrub=runtime.scrub)
            telemetry.start()
            for r in results:
                with telemetry.call("sql_query", None, None):
                    note_result(r)
            telemetry.close()
        finally:
            runtime.close()
        receiver.wait(spans=60, logs=60, timeout=5)
    assert {r["attrs"]["safe_mcp.receipt_id"] for r in receiver.logs} == {r.receipt_id for r in results}


async def test_without_a_traceparent_each_call_starts_its_own_trace(tmp_path: Path) -> None:
    with otlp_receiver() as receiver:
        cfg = make_config(tmp_path, receiver.url)
        async with connect(cfg, "stdio", env={"OTLP_TEST_AUTH": AUTH}) as client:
            for _ in range(2):
                r = await client.call_tool("sql_query", {"target": "shop", "sql": "SELECT 1"})
                assert not r.is_error
            # A malformed traceparent is ignored, never an error.
            r = await client.call_tool("sql_query", {"target": "shop", "sql": "SELECT 2"}, meta={"traceparent": "00-zz"})
            assert not r.is_error
        receiver.wait(spans=3, logs=3)
    assert len({s["trace_id"] for s in receiver.spans}) == 3
    assert all(s["parent"] == "" for s in receiver.spans)


async def test_a_receiver_that_is_down_costs_the_calls_nothing(tmp_path: Path) -> None:
    """Export is off the request path: with nothing listening, calls answer at once and the server still exits."""
    from support import free_port

    cfg = make_config(tmp_path, f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    async with connect(cfg, "stdio", env={"OTLP_TEST_AUTH": AUTH}) as client:
        for i in range(5):
            r = await client.call_tool("sql_execute", {"target": "shop", "sql": f"INSERT INTO items (name) VALUES ('n{i}')"})
            assert not r.is_error
    assert time.monotonic() - started < 30
    with sqlite3.connect(tmp_path / "shop.db") as db:
        assert db.execute("SELECT count(*) FROM items").fetchone() == (8,)


def test_a_config_without_telemetry_imports_no_opentelemetry_sdk(tmp_path: Path) -> None:
    """Clients spawn stdio servers often: the SDK, the exporter and protobuf load only for a [telemetry] config."""
    cfg = write_config(tmp_path, '[targets.db]\nkind = "sqlite"\npath = "x.db"\n')
    code = (
        "import sys, anyio\n"
        "from safe_mcp.trust.config import load_config\n"
        "from safe_mcp.gate.runtime import Runtime\n"
        "from safe_mcp.faces.server import build_server\n"
        "from mcp import Client\n"
        f"server = build_server(Runtime(load_config({str(cfg)!r})))\n"
        "async def main():\n"
        "    async with Client(server) as c:\n"
        "        await c.call_tool('sql_query', {'target': 'db', 'sql': 'SELECT 1'})\n"
        "anyio.run(main)\n"
        "heavy = ('opentelemetry.sdk', 'opentelemetry.exporter', 'google.protobuf', 'requests')\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith(heavy))))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


@pytest.mark.parametrize(("headers", "problem"), [
    ('{authorization = "Bearer abc"}', "header authorization is a secret written in the config"),
    ('{x-api-key = "abc"}', "header x-api-key is a secret written in the config"),
])
def test_a_secret_header_must_be_a_reference(tmp_path: Path, headers: str, problem: str) -> None:
    from safe_mcp.errors import ConfigError
    from safe_mcp.trust.config import load_config

    cfg = write_config(tmp_path, f"""
        [targets.db]
        kind = "sqlite"
        path = "x.db"

        [telemetry]
        otlp_endpoint = "http://127.0.0.1:4318"
        headers = {headers}
        """)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert problem in str(err.value) and "abc" not in str(err.value)
    assert "env:VAR" in str(err.value)


async def test_the_receivers_secret_is_scrubbed_from_results_receipts_and_exports(tmp_path: Path) -> None:
    """The header secret joins the scrubber: an agent that somehow holds it cannot get it into a receipt or log."""
    with otlp_receiver() as receiver:
        cfg = make_config(tmp_path, receiver.url)
        async with connect(cfg, "stdio", env={"OTLP_TEST_AUTH": AUTH}) as client:
            r = await client.call_tool("sql_query", {"target": "shop", "sql": f"SELECT '{AUTH}' AS leaked"})
            assert not r.is_error and AUTH not in json.dumps(r.structured_content)
        receiver.wait(spans=1, logs=1)
    assert AUTH not in json.dumps(receiver.spans) + json.dumps(receiver.logs)
    assert "[redacted]" in receiver.logs[0]["body"]["args"]["sql"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert AUTH.encode() not in path.read_bytes(), path


def test_a_missing_header_secret_stops_the_server_with_the_fix(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, "http://127.0.0.1:9")
    env = {k: v for k, v in os.environ.items() if k != "OTLP_TEST_AUTH"}
    r = subprocess.run([sys.executable, "-m", "safe_mcp", "serve", "--config", str(cfg)], input="", capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode != 0
    assert "telemetry.headers.authorization: environment variable OTLP_TEST_AUTH is not set" in r.stderr
    assert "export OTLP_TEST_AUTH=" in r.stderr and "Traceback" not in r.stderr


async def test_export_receipts_false_sends_spans_only(tmp_path: Path) -> None:
    with otlp_receiver() as receiver:
        cfg = make_config(tmp_path, receiver.url)
        cfg.write_text(cfg.read_text().replace('service_name = "safe-mcp-test"',
                                               'service_name = "safe-mcp-test"\nexport_receipts = false'))
        async with connect(cfg, "stdio", env={"OTLP_TEST_AUTH": AUTH}) as client:
            r = await client.call_tool("sql_execute", {"target": "shop", "sql": "INSERT INTO items (name) VALUES ('z')"})
            assert not r.is_error
        receiver.wait(spans=1, logs=0)
        time.sleep(0.5)
    assert receiver.logs == []
    assert receiver.spans[0]["attrs"]["safe_mcp.outcome"] == "executed"
    assert receiver.spans[0]["attrs"]["safe_mcp.rows"] == 1
