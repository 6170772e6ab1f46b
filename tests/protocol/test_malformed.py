"""The protocol always answers: malformed, oversized and unbindable requests sent raw over stdio and HTTP.

Each bad input gets an answer (a JSON-RPC error, or a receipted refusal when it reached a tool), the same
server then still answers a good call, and a refusal's receipt is in the state store. A 50 MB request line
leaves the server's memory where it was.
"""

from __future__ import annotations

import json
import os
import select
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import SHOP_TARGETS, create_token, free_port, ledger_rows, serve_cmd, serving, wait_port, write_config

from safe_mcp.faces.demo import create_shop

PROTOCOL = "2025-11-25"


def tool_call(id_: int, arguments_json: str, tool: str = "sql_query") -> bytes:
    """A tools/call written by hand, so it can carry what no client library would send."""
    return (f'{{"jsonrpc":"2.0","id":{id_},"method":"tools/call",'
            f'"params":{{"name":"{tool}","arguments":{arguments_json}}}}}').encode()


DEEP = '{"target":"shop","sql":"SELECT 1","params":{"a":' + "[" * 5000 + "]" * 5000 + "}}"

# (label, request, what the answer must say). `refusal` answers are receipted tool refusals.
PROTOCOL_ERRORS: list[tuple[str, bytes, int]] = [
    ("not JSON", b"{not json", -32700),
    ("truncated JSON", b'{"jsonrpc":"2.0","id":3,"method":"ping"', -32700),
    ("not UTF-8", b'{"jsonrpc":"2.0","id":3,"method":"ping","params":{"x":"\xff"}}', -32700),
    ("a bare number", b"42", -32600),
    ("a batch", b'[{"jsonrpc":"2.0","id":3,"method":"ping"}]', -32600),
    ("no method", b'{"jsonrpc":"2.0","id":3}', -32600),
    ("wrong jsonrpc version", b'{"jsonrpc":"1.0","id":3,"method":"ping"}', -32600),
    ("an object as id", b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', -32600),
    ("arguments not an object", b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"sql_query",'
                                b'"arguments":[1]}}', -32602),
    ("an unknown method", b'{"jsonrpc":"2.0","id":3,"method":"tools/\\ud800"}', -32601),
]

REFUSALS: list[tuple[str, bytes, str]] = [
    ("lone surrogate in sql", tool_call(10, r'{"target":"shop","sql":"SELECT \"\ud800\""}'), "sql holds a lone surrogate"),
    ("lone surrogate in a parameter", tool_call(11, r'{"target":"shop","sql":"SELECT ?","params":["a\udfff"]}'),
     "params[0] holds a lone surrogate"),
    ("lone surrogate in a parameter name", tool_call(12, r'{"target":"shop","sql":"SELECT 1","params":{"x\udc00":1}}'),
     "holds a lone surrogate"),
    ("lone surrogate in an idempotency key", tool_call(
        13, r'{"target":"admin","sql":"UPDATE products SET price_cents = 0","idempotency_key":"k\ud800"}', "sql_execute"),
     "idempotency_key holds a lone surrogate"),
    ("integer beyond 64 bits", tool_call(14, '{"target":"shop","sql":"SELECT ?","params":[1208925819614629174706176]}'),
     "params[0] is an integer beyond 64 bits"),
    ("an integer of 6000 digits", tool_call(15, '{"target":"shop","sql":"SELECT ?","params":[' + "9" * 6000 + "]}"),
     "params[0] is an integer beyond 64 bits"),
    ("a number that overflows to infinity", tool_call(16, '{"target":"shop","sql":"SELECT ?","params":[1e999]}'),
     "params[0] is not a finite number"),
    ("nesting 40 deep", tool_call(17, '{"target":"shop","sql":"SELECT 1","params":{"a":' + "[" * 40 + "]" * 40 + "}}"),
     "nests deeper than 32 levels"),
    ("nesting 5000 deep", tool_call(18, DEEP), "nests deeper than 32 levels"),
    ("a misspelt argument", tool_call(
        19, '{"target":"admin","sql":"UPDATE products SET price_cents = 0","dryrun":true}', "sql_execute"),
     "has no argument 'dryrun'"),
    ("a wrong type", tool_call(20, '{"target":"shop","sql":5}'), "sql should be a string"),
]


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    create_shop(tmp_path / "shop.db")
    return write_config(tmp_path, SHOP_TARGETS)


def prices(config: Path) -> list[Any]:
    with sqlite3.connect(config.parent / "shop.db") as db:
        return db.execute("SELECT id, price_cents FROM products ORDER BY id").fetchall()


def receipt(config: Path, text: str) -> dict[str, Any]:
    """The refusal receipt a tool error quotes, read from the state store itself."""
    assert "receipt: rcpt_" in text, text
    rid = text.rsplit("receipt: ", 1)[1].split()[0].rstrip(".")
    rows = ledger_rows(config, "SELECT body FROM receipts WHERE id = ?", (rid,))
    assert rows, rid
    body: dict[str, Any] = json.loads(str(rows[0][0]))
    assert body["decision"] == "refuse" and body["outcome"] == "refused", body
    return body


def check_refusal(config: Path, answer: dict[str, Any], words: str) -> None:
    result = answer.get("result")
    assert result is not None and result["isError"] is True, answer
    text = result["content"][0]["text"]
    assert "refused: " in text and words in text and "to proceed: " in text, text
    receipt(config, text)


GOOD = tool_call(99, '{"target":"shop","sql":"SELECT count(*) AS n FROM orders"}')


def check_good(answer: dict[str, Any]) -> None:
    assert answer["id"] == 99 and answer["result"]["structuredContent"]["rows"] == [[12]], answer


# ------------------------------------------------------------------ stdio


class RawStdio:
    """`safe-mcp serve` over stdio, spoken to line by line."""

    def __init__(self, config: Path, log: Any) -> None:
        self.proc = subprocess.Popen(serve_cmd(config), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                     env=dict(os.environ))
        self.buf = b""
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
        self.send(json.dumps(init).encode())
        assert self.recv()["result"]["protocolVersion"] == PROTOCOL
        self.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')

    def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float = 20) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            ready, _, _ = select.select([fd], [], [], timeout)
            assert ready, "the server did not answer"
            chunk = os.read(fd, 1 << 16)
            assert chunk, "the server closed stdout"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        """End the session as a client does (EOF on stdin) and reap the process."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.fixture
def raw(shop: Path) -> Iterator[RawStdio]:
    with tempfile.TemporaryFile() as log:
        server = RawStdio(shop, log)
        try:
            yield server
        finally:
            server.close()
            log.seek(0)
            errors = log.read().decode(errors="replace")
    assert "Traceback" not in errors, errors[-3000:]


@pytest.mark.parametrize(("label", "line", "code"), PROTOCOL_ERRORS, ids=[c[0] for c in PROTOCOL_ERRORS])
def test_stdio_answers_malformed_lines_and_keeps_serving(raw: RawStdio, label: str, line: bytes, code: int) -> None:
    raw.send(line)
    answer = raw.recv()
    assert answer["error"]["code"] == code, (label, answer)
    raw.send(GOOD)
    check_good(raw.recv())


def test_stdio_refuses_what_no_target_can_take_with_receipts(raw: RawStdio, shop: Path) -> None:
    before = prices(shop)
    for label, line, words in REFUSALS:
        raw.send(line)
        answer = raw.recv()
        assert answer["id"] == json.loads(line.decode()[:60].split('"id":')[1].split(",")[0]), label
        check_refusal(shop, answer, words)
        raw.send(GOOD)
        check_good(raw.recv())
    assert prices(shop) == before, "nothing refused may change the target"


def test_stdio_refuses_a_50_mb_line_unread_and_memory_stays_bounded(raw: RawStdio) -> None:
    raw.send(GOOD)
    check_good(raw.recv())
    before = raw.rss_kb()
    payload = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"sql_query","arguments":' \
              b'{"target":"shop","sql":"SELECT \'' + b"a" * 50_000_000 + b'\'"}}}'
    raw.send(payload)
    answer = raw.recv(60)
    assert answer["id"] == 7 and answer["error"]["code"] == -32600, answer
    assert "max_request_bytes" in answer["error"]["message"]
    raw.send(b'{"jsonrpc":"2.0","method":"x",' + b'"p":"' + b"b" * 6_000_000 + b'"}')  # a notification: no id
    answer = raw.recv(60)
    assert answer["id"] is None and answer["error"]["code"] == -32600
    raw.send(GOOD)
    check_good(raw.recv())
    grown = raw.rss_kb() - before
    assert grown < 20_000, f"RSS grew by {grown} kB for a 50 MB request"


def test_the_cap_is_configurable(tmp_path: Path) -> None:
    create_shop(tmp_path / "shop.db")
    config = write_config(tmp_path, SHOP_TARGETS + "\n[server]\nmax_request_bytes = 65536\n")
    with tempfile.TemporaryFile() as log:
        server = RawStdio(config, log)
        try:
            server.send(tool_call(5, '{"target":"shop","sql":"SELECT \'' + "a" * 70_000 + "'\"}"))
            assert server.recv()["error"]["code"] == -32600
            server.send(tool_call(6, '{"target":"shop","sql":"SELECT length(\'' + "a" * 60_000 + "')\"}"))
            assert server.recv()["result"]["structuredContent"]["rows"] == [[60_000]]
        finally:
            server.close()


# ------------------------------------------------------------------ HTTP


class RawHttp:
    """One MCP session over streamable HTTP (the 2025-11-25 protocol, which keeps a session), spoken raw."""

    def __init__(self, port: int, token: str) -> None:
        import httpx2

        self.http = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json", "MCP-Protocol-Version": PROTOCOL})
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
        r = self.http.post("/mcp", content=json.dumps(init))
        assert r.status_code == 200, r.text
        self.http.headers["Mcp-Session-Id"] = r.headers["mcp-session-id"]
        assert self.http.post("/mcp", content=b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
                              ).status_code == 202

    def post(self, body: bytes, **kw: Any) -> tuple[int, dict[str, Any]]:
        r = self.http.post("/mcp", content=body, **kw)
        text = r.text
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            text = next(line[5:] for line in text.splitlines() if line.startswith("data:") and line[5:].strip())
        return r.status_code, json.loads(text)


@pytest.fixture
def raw_http(shop: Path) -> Iterator[RawHttp]:
    with serving(shop, "http") as port:
        client = RawHttp(port, create_token(shop))
        try:
            yield client
        finally:
            client.http.close()


def test_http_answers_malformed_bodies_and_keeps_serving(raw_http: RawHttp) -> None:
    for label, body, code in PROTOCOL_ERRORS:
        status, answer = raw_http.post(body)
        assert status in (200, 400) and "error" in answer, (label, status, answer)
        assert answer["error"]["code"] == code, (label, answer)
        _, good = raw_http.post(GOOD)
        check_good(good)


def test_http_refuses_what_no_target_can_take_with_receipts(raw_http: RawHttp, shop: Path) -> None:
    before = prices(shop)
    for label, body, words in REFUSALS:
        status, answer = raw_http.post(body)
        assert status == 200, (label, status, answer)
        check_refusal(shop, answer, words)
        _, good = raw_http.post(GOOD)
        check_good(good)
    assert prices(shop) == before


def test_http_refuses_an_oversized_body_before_reading_it(raw_http: RawHttp) -> None:
    big = b'{"jsonrpc":"2.0","id":7,"method":"ping","x":"' + b"a" * 50_000_000 + b'"}'
    status, answer = raw_http.post(big)
    assert status == 413 and answer["error"]["code"] == -32600 and "max_request_bytes" in answer["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap holds as the body streams
        yield b'{"jsonrpc":"2.0","id":8,"method":"ping","x":"'
        for _ in range(50):
            yield b"a" * 1_000_000
        yield b'"}'

    r = raw_http.http.post("/mcp", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == -32600
    _, good = raw_http.post(GOOD)
    check_good(good)


def test_stdio_answers_a_burst_of_bad_lines_in_order(raw: RawStdio) -> None:
    """Lines arriving together (one read) are each answered, and the good one after them too."""
    assert raw.proc.stdin is not None
    raw.proc.stdin.write(b"\n".join(line for _label, line, _code in PROTOCOL_ERRORS) + b"\n" + GOOD + b"\n")
    raw.proc.stdin.flush()
    codes = [raw.recv()["error"]["code"] for _ in PROTOCOL_ERRORS]
    assert codes == [code for _label, _line, code in PROTOCOL_ERRORS]
    check_good(raw.recv())


MODERN = "2026-07-28"
MODERN_META = b'"_meta":' + json.dumps({
    "io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"}}).encode() + b","


def test_http_on_2026_07_28_refuses_the_same_with_receipts(shop: Path) -> None:
    """The 2026-07-28 revision has no session and parses with Python's json: the same answers, per request."""
    import re

    import httpx2

    with serving(shop, "http") as port, httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers={
            "Authorization": f"Bearer {create_token(shop)}", "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json", "MCP-Protocol-Version": MODERN}) as http:

        def post(body: bytes) -> dict[str, Any]:
            method = re.search(rb'"method":"([^"]+)"', body)
            name = re.search(rb'"name":"([^"]+)"', body)
            body = body.replace(b'"params":{', b'"params":{' + MODERN_META, 1)
            headers = {"Mcp-Method": method.group(1).decode() if method else "",
                       **({"Mcp-Name": name.group(1).decode()} if name else {})}
            r = http.post("/mcp", content=body, headers=headers)
            text = r.text
            if r.headers.get("content-type", "").startswith("text/event-stream"):
                text = next(line[5:] for line in text.splitlines() if line.startswith("data:") and line[5:].strip())
            answer: dict[str, Any] = json.loads(text)
            return answer

        before = prices(shop)
        for label, body, words in REFUSALS:
            answer = post(body)
            assert "result" in answer, (label, answer)
            check_refusal(shop, answer, words)
            check_good(post(GOOD))
        assert prices(shop) == before
        for label, body, code in PROTOCOL_ERRORS[:7]:
            answer = post(body)
            assert answer["error"]["code"] == code, (label, answer)
        check_good(post(GOOD))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_http_memory_stays_bounded_under_50_mb_bodies(shop: Path) -> None:
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(serve_cmd(shop, "--transport", "http", "--port", str(port)),
                                stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ))
        try:
            wait_port(port, proc)
            client = RawHttp(port, create_token(shop))
            _, good = client.post(GOOD)
            check_good(good)
            before = rss_kb(proc.pid)
            big = b'{"jsonrpc":"2.0","id":7,"method":"ping","x":"' + b"a" * 50_000_000 + b'"}'
            for _ in range(3):
                assert client.http.post("/mcp", content=big).status_code == 413

                def chunks() -> Iterator[bytes]:
                    yield b'{"jsonrpc":"2.0","id":8,"method":"ping","x":"'
                    for _ in range(50):
                        yield b"a" * 1_000_000
                    yield b'"}'

                assert client.http.post("/mcp", content=chunks()).status_code == 413
            _, good = client.post(GOOD)
            check_good(good)
            grown = rss_kb(proc.pid) - before
            assert grown < 30_000, f"RSS grew by {grown} kB for six 50 MB bodies"
            client.http.close()
        finally:
            proc.terminate()
            proc.wait(10)
            log.seek(0)
            errors = log.read().decode(errors="replace")
    assert "Traceback" not in errors, errors[-3000:]


def test_sse_answers_malformed_bodies_and_refuses_with_receipts(shop: Path) -> None:
    """The legacy SSE transport: answers come on the event stream, envelope errors on the POST itself."""
    import httpx2

    with serving(shop, "sse") as port, httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers={
            "Authorization": f"Bearer {create_token(shop)}"}) as http, http.stream("GET", "/sse") as events:
        lines = events.iter_lines()

        def next_data() -> str:
            for line in lines:
                if line.startswith("data:"):
                    return line[5:].strip()
            raise AssertionError("the event stream ended")

        endpoint = next_data()
        post_headers = {"Content-Type": "application/json"}

        def rpc(body: bytes) -> dict[str, Any]:
            r = http.post(endpoint, content=body, headers=post_headers)
            if r.status_code != 202:
                answer: dict[str, Any] = r.json()
                return answer
            answer = json.loads(next_data())
            return answer

        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
        assert rpc(json.dumps(init).encode())["result"]["protocolVersion"] == PROTOCOL
        assert http.post(endpoint, content=b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
                         headers=post_headers).status_code == 202
        for label, body, code in PROTOCOL_ERRORS:
            answer = rpc(body)
            assert answer["error"]["code"] == code, (label, answer)
        before = prices(shop)
        for label, body, words in REFUSALS:
            answer = rpc(body)
            assert "result" in answer, (label, answer)
            check_refusal(shop, answer, words)
            check_good(rpc(GOOD))
        assert prices(shop) == before


def test_stdio_answers_a_last_line_without_newline(raw: RawStdio) -> None:
    """Even as stdin ends: the request is answered (the SDK cancels work in flight at EOF, and says so)."""
    assert raw.proc.stdin is not None
    raw.proc.stdin.write(GOOD)
    raw.proc.stdin.close()
    assert raw.recv()["id"] == 99


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_the_guard_holds_without_tokens_too(tmp_path: Path, transport: str) -> None:
    """With `auth = "none"` on loopback the endpoint has no bearer check to sit behind: still guarded."""
    import httpx2

    create_shop(tmp_path / "shop.db")
    config = write_config(tmp_path, SHOP_TARGETS + '\n[server]\nauth = "none"\n')
    path = "/mcp" if transport == "http" else "/messages/?session_id=00000000000000000000000000000000"
    with serving(config, transport) as port, httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        r = http.post(path, content=b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', headers={
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
        assert r.status_code == 400 and r.json()["error"]["code"] == -32600, r.text
        r = http.post(path, content=b"{nope", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == -32700, r.text
