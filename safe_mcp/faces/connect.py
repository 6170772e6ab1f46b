"""`safe-mcp connect URL`: a stdio MCP server that relays every message to a gateway's streamable HTTP endpoint.

For clients that only start stdio servers (Claude Desktop) while the gateway runs elsewhere: as its own OS
user, on another host, as a service. The bridge holds one thing, the client's bearer token, read from an
environment variable or a file only its owner can read (never from the command line, which `ps` shows to
every user). It holds no target credential, no config and no state: whoever reads its memory or environment
gets the token, which `safe-mcp token revoke` ends. The gateway may also listen on a Unix socket (`serve --uds`,
reached as `unix:///run/safe-mcp/mcp.sock`): the kernel then lets only the socket's owner and group connect,
and the token is still required.

It is a JSON-RPC relay, not a second MCP implementation: each line from the client is POSTed to the URL as is;
the answer (JSON, or the events of an SSE stream) goes back to the client line by line. HTTP details it adds:
`Authorization`, `Mcp-Session-Id` after an `initialize`, `MCP-Protocol-Version` (the negotiated version, or the
one a 2026-era request names in `params._meta`), `Mcp-Method` and `Mcp-Name`. Requests run concurrently (a
`confirm` may wait while the client reads its targets); notifications and the client's answers to server
requests are sent in order. When the gateway cannot be reached, or answers with an HTTP error, each request
gets a JSON-RPC error that says so and what to do, and the bridge keeps running.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from safe_mcp.errors import ConfigError

__all__ = ["Bridge", "run_bridge", "token_from", "unix_socket_of"]

DEFAULT_TOKEN_ENV = "SAFE_MCP_TOKEN"  # noqa: S105 - the name of a variable
GATEWAY_UNREACHABLE = -32000
_PROTOCOL_META = "io.modelcontextprotocol/protocolVersion"
_NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_CONNECT_TIMEOUT_S = 10.0


def token_from(env: str | None, file: str | None) -> str | None:
    """The bearer token from `file` (owned by this user, mode 0600 or stricter) or the variable `env`
    (default SAFE_MCP_TOKEN); None when neither was named and SAFE_MCP_TOKEN is unset.

    Raises:
        ConfigError: the named file or variable is missing, empty or (the file) readable by others.
    """
    if file:
        path = Path(file)
        try:
            st = path.stat()
        except OSError as exc:
            raise ConfigError("connect", "--token-file", f"cannot read {path}: {exc.strerror}",
                              "write the token there (safe-mcp token create prints it) with mode 600") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or st.st_uid != os.getuid():
            raise ConfigError("connect", "--token-file",
                              f"{path} is readable by others or not yours (mode {stat.S_IMODE(st.st_mode):o})",
                              f"chmod 600 {path} and own it (chown $USER {path})")
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise ConfigError("connect", "--token-file", f"{path} is empty", "write the token into it")
        return token
    name = env or DEFAULT_TOKEN_ENV
    token = os.environ.get(name, "").strip()
    if token:
        return token
    if env:
        raise ConfigError("connect", "--token-env", f"the environment variable {env} is not set",
                          f"set {env} to the token from `safe-mcp token create` in the client's config for this server")
    return None


class Bridge:
    """Relays JSON-RPC lines between a stdio client (`inp`, `out`) and the gateway at `url`."""

    def __init__(self, url: str, token: str | None, inp: IO[bytes], out: IO[bytes]) -> None:
        """Raises:
            ConfigError: `url` is not an http:// or https:// URL with a host, nor a Unix socket URL
                (`unix:///path/to/socket`, `http+unix://%2Fpath%2Fto%2Fsocket/mcp`).
        """
        parts = urllib.parse.urlsplit(url)
        self._uds, self._path = unix_socket_of(url), parts.path or "/"
        if self._uds is not None:
            self._path = (parts.path or "/mcp") if parts.scheme == "http+unix" else "/mcp"
        elif parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError("connect", "URL", f"not an http://, https:// or unix:// URL: {url!r}",
                              "give the gateway's MCP endpoint, e.g. http://127.0.0.1:8765/mcp or "
                              "unix:///run/safe-mcp/mcp.sock")
        self.url, self._parts, self._token = url, parts, token
        self._inp, self._out = inp, out
        self._write_lock = threading.Lock()
        self._session_id: str | None = None
        self._version: str | None = None
        self._threads: list[threading.Thread] = []

    # stdio side ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Relay until the client closes stdin; then wait for requests in flight and end the session."""
        for raw in self._inp:
            line = raw.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                message = None  # the gateway answers malformed input itself; relay it in order
            if isinstance(message, dict) and "method" in message and "id" in message and message["method"] != "initialize":
                t = threading.Thread(target=self._relay, args=(line, message), daemon=True)
                t.start()
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
            else:
                self._relay(line, message)  # initialize, notifications, the client's answers: in order
        for t in self._threads:
            t.join()
        self._end_session()

    def _emit(self, message: bytes) -> None:
        with self._write_lock:
            self._out.write(message.rstrip(b"\r\n") + b"\n")
            self._out.flush()

    def _error(self, request_id: Any, text: str, code: int = GATEWAY_UNREACHABLE) -> None:
        self._emit(json.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": text}}).encode())

    # HTTP side ----------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        if self._uds is not None:
            conn: http.client.HTTPConnection = _UnixConnection(self._uds, _CONNECT_TIMEOUT_S)
        else:
            cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
            conn = cls(self._parts.hostname or "", self._parts.port, timeout=_CONNECT_TIMEOUT_S)
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(None)  # a tool call may wait (confirm wait_s); the gateway bounds it
        return conn

    def _headers(self, message: Any) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self._session_id:
            headers["Mcp-Session-Id"] = self._session_id
        version = self._version
        if isinstance(message, dict):
            meta = (message.get("params") or {}).get("_meta") if isinstance(message.get("params"), dict) else None
            if isinstance(meta, dict) and isinstance(meta.get(_PROTOCOL_META), str):
                version = meta[_PROTOCOL_META]  # a 2026-era request names its version; the headers must agree
                method = message.get("method")
                if isinstance(method, str):
                    headers["Mcp-Method"] = method
                    name = message["params"].get(_NAME_BEARING.get(method, ""))
                    if isinstance(name, str):
                        headers["Mcp-Name"] = _header_value(name)
            elif message.get("method") == "initialize":
                version = None
        if version:
            headers["MCP-Protocol-Version"] = version
        return headers

    def _relay(self, line: bytes, message: Any) -> None:
        request_id = message.get("id") if isinstance(message, dict) and "method" in message else None
        is_request = isinstance(message, dict) and "method" in message and "id" in message
        try:
            conn = self._connection()
        except OSError as exc:
            text = (f"the safe-mcp gateway at {self.url} is not reachable ({exc.strerror or exc}); start it "
                    "(safe-mcp serve --transport http, as its own user) or check the URL, then retry")
            if isinstance(exc, PermissionError) and self._uds is not None:
                text = (f"the safe-mcp gateway's socket {self._uds} refuses this OS user (Permission denied): only "
                        "the gateway's user and the members of its group ([server] uds_group / --uds-group) may "
                        "connect; ask its operator to add this user to that group, then start the client again")
            self._report(is_request, request_id, text)
            return
        try:
            conn.request("POST", self._path, body=line, headers=self._headers(message))
            response = conn.getresponse()
            self._answer(response, message, is_request, request_id)
        except (OSError, http.client.HTTPException) as exc:
            self._report(is_request, request_id,
                         f"the connection to the safe-mcp gateway at {self.url} broke ({type(exc).__name__}: {exc}); "
                         "the call may or may not have run: look it up with the receipts tool before retrying")
        finally:
            conn.close()

    def _report(self, is_request: bool, request_id: Any, text: str) -> None:
        if is_request:
            self._error(request_id, text)
        else:
            print(f"safe-mcp connect: {text}", file=sys.stderr, flush=True)

    def _answer(self, response: http.client.HTTPResponse, message: Any, is_request: bool, request_id: Any) -> None:
        kind = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if response.status == 202 or (not is_request and message is not None and kind != "text/event-stream"):
            # A notification or the client's answer gets no reply on the wire; a refusal is told on stderr only.
            body = response.read()
            if response.status >= 300:
                print(f"safe-mcp connect: {_http_problem(response.status, self.url, body)}", file=sys.stderr, flush=True)
            return
        if isinstance(message, dict) and message.get("method") == "initialize" and response.status < 300:
            self._session_id = response.getheader("Mcp-Session-Id") or self._session_id
        if kind == "text/event-stream":
            answered = False
            for data in _sse_data(response):
                self._emit(data)
                answered = answered or _answers(data, request_id)
            if is_request and not answered:
                self._error(request_id, f"the safe-mcp gateway at {self.url} closed the stream before answering; the "
                                        "call may or may not have run: look it up with the receipts tool before retrying")
            return
        body = response.read()
        doc = _jsonrpc(body) if kind == "application/json" else None
        if doc is not None:
            if isinstance(message, dict) and message.get("method") == "initialize":
                self._learn_version(doc)
            if is_request and isinstance(doc, dict) and "error" in doc and doc.get("id") is None:
                doc["id"] = request_id  # rejected before its id was read: give the client something to match
                body = json.dumps(doc).encode()
            self._emit(body)
            return
        if is_request or message is None:
            self._error(request_id, _http_problem(response.status, self.url, body))

    def _learn_version(self, doc: Any) -> None:
        result = doc.get("result") if isinstance(doc, dict) else None
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        if isinstance(version, str):
            self._version = version

    def _end_session(self) -> None:
        if not self._session_id:
            return
        try:
            conn = self._connection()
            conn.request("DELETE", self._path, headers=self._headers(None))
            conn.getresponse().read()
            conn.close()
        except (OSError, http.client.HTTPException):
            pass  # the gateway went away first: its session ends with it


def unix_socket_of(url: str) -> str | None:
    """The socket path of a Unix-socket URL: `unix:///run/safe-mcp/mcp.sock` (the endpoint is /mcp) or
    `http+unix://%2Frun%2Fsafe-mcp%2Fmcp.sock/mcp`; None for any other scheme.

    Raises:
        ConfigError: a unix URL without an absolute socket path.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        path = urllib.parse.unquote(parts.path)
        if parts.netloc or not path.startswith("/") or parts.query or parts.fragment:
            raise ConfigError("connect", "URL", f"not a Unix socket URL: {url!r}",
                              "give the socket's absolute path after unix://, e.g. unix:///run/safe-mcp/mcp.sock")
        return path
    if parts.scheme == "http+unix":
        path = urllib.parse.unquote(parts.netloc)
        if not path.startswith("/"):
            raise ConfigError("connect", "URL", f"not a Unix socket URL: {url!r}",
                              "percent-encode the socket's absolute path as the host: http+unix://%2Frun%2Fmcp.sock/mcp")
        return path
    return None


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket; the Host header is `localhost`, the one `serve --uds` accepts."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _header_value(value: str) -> str:
    if value.isascii() and value.isprintable() and value == value.strip() and not value.startswith("=?"):
        return value
    from mcp.shared.inbound import encode_header_value

    return encode_header_value(value)


def _jsonrpc(body: bytes) -> Any:
    """`body` parsed when it is a JSON-RPC message (or batch); None for anything else (an OAuth error, HTML)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    items = doc if isinstance(doc, list) else [doc]
    return doc if items and all(isinstance(i, dict) and i.get("jsonrpc") == "2.0" for i in items) else None


def _answers(data: bytes, request_id: Any) -> bool:
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and "method" not in doc and doc.get("id") == request_id


def _sse_data(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The data of every `message` event of an SSE stream (priming events without data are skipped)."""
    data: list[bytes] = []
    event = b"message"
    while True:
        raw = response.readline()
        if not raw:
            break
        line = raw.rstrip(b"\r\n")
        if not line:
            if data and event == b"message":
                yield b"\n".join(data)
            data, event = [], b"message"
        elif line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
        elif line.startswith(b"event:"):
            event = line[6:].strip()
    if data and event == b"message":
        yield b"\n".join(data)


def _http_problem(status: int, url: str, body: bytes) -> str:
    if status == 401:
        return (f"the safe-mcp gateway at {url} refused the token (401): create one with `safe-mcp token create --name "
                f"NAME --role agent` as the gateway's user and give it to this bridge ({DEFAULT_TOKEN_ENV} or --token-file)")
    if status == 403:
        return f"the safe-mcp gateway at {url} refused this client (403): an approver token, or a Host/Origin it does not allow"
    if status == 404:
        return (f"the safe-mcp gateway at {url} does not know this session or path (404): it may have restarted; "
                "restart the client's connection to this server")
    detail = body[:200].decode("utf-8", "replace").strip()
    return f"the safe-mcp gateway at {url} answered HTTP {status}" + (f": {detail}" if detail else "")


def run_bridge(url: str, token: str | None) -> int:
    """Relay stdin/stdout to `url` until stdin closes; 0 then.

    Raises:
        ConfigError: `url` is not usable.
    """
    if token is None:
        print(f"safe-mcp connect: no token ({DEFAULT_TOKEN_ENV} is unset): the gateway will refuse every call unless it "
              "runs with [server] auth = \"none\" on loopback", file=sys.stderr, flush=True)
    Bridge(url, token, sys.stdin.buffer, sys.stdout.buffer).run()
    return 0
