"""OpenTelemetry: a span per tool call carrying the gate's verdict, and each call's receipt as a log record.

Nothing of the OpenTelemetry SDK or its OTLP exporter (requests, protobuf) is imported unless the config has
a `[telemetry]` table: clients spawn stdio servers often. (The small API package is loaded by the MCP SDK.)

Export stays off the request path. A call ends by handing its span and receipt id to one worker thread,
which reads the receipt from the state store, completes the span with the receipt's decision and outcome,
ends it at the moment the call ended, and emits the receipt as a log record in the span's trace. Batch
processors send both over OTLP/HTTP in the background; `close` drains the worker and flushes them.

Receipts are exported per call rather than by tailing the ledger: the log record then sits in the call's
trace, and instances sharing one PostgreSQL ledger each export only their own calls, never each other's.
The price: receipts written outside a tool call (the CLI, the approval page, mail leaving the outbox) are
not exported; the ledger itself remains the complete record.

The spans come from a tracer provider of safe-mcp's own, not the process-global one: the MCP SDK's own
middleware would otherwise add a second span per call, parented by `_meta` only (never by an HTTP header).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from safe_mcp.errors import Refused, SafeMcpError
from safe_mcp.gate.pipeline import GateResult
from safe_mcp.state.receipts import Receipt
from safe_mcp.trust.config import SECRET_REF, TelemetrySettings
from safe_mcp.trust.scrub import Scrubber

if TYPE_CHECKING:
    from opentelemetry._logs import Logger
    from opentelemetry.context import Context as OtelContext
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = ["Telemetry", "note_refusal", "note_result"]

log = logging.getLogger("safe_mcp.telemetry")

# Attribute names: the MCP/GenAI semantic conventions where they exist, `safe_mcp.*` for the gate's verdict.
RECEIPT_ATTRS = ("target", "tool", "effect", "decision", "outcome", "affected", "session", "run_id", "action_id",
                 "refers_to", "seq", "hash", "prev", "policy_digest")


@dataclass
class CallRecord:
    """What the server learns about one tool call while it runs; filled by `note_result` / `note_refusal`."""

    attributes: dict[str, str | int] = field(default_factory=dict)
    receipt_id: str | None = None
    error: str | None = None


_current: ContextVar[CallRecord | None] = ContextVar("safe_mcp_call_record", default=None)


def note_result(result: GateResult) -> None:
    """Record the gate's result on the current call's span (nothing when telemetry is off)."""
    record = _current.get()
    if record is None:
        return
    record.receipt_id = result.receipt_id
    record.attributes.update({"safe_mcp.receipt_id": result.receipt_id, "safe_mcp.status": result.status,
                              "safe_mcp.target": result.target, "safe_mcp.tool": result.tool,
                              "safe_mcp.effect": result.effect})
    rows = result.affected if result.affected is not None else result.result.get("row_count")
    if isinstance(rows, int):
        record.attributes["safe_mcp.rows"] = rows


def note_refusal(exc: SafeMcpError, text: str) -> None:
    """Record a refusal or failure (`text` already scrubbed) on the current call's span."""
    record = _current.get()
    if record is None:
        return
    record.error = text
    record.attributes["safe_mcp.status"] = "refused" if isinstance(exc, Refused) else "failed"
    if isinstance(exc, Refused) and exc.receipt_id:
        record.receipt_id = exc.receipt_id
        record.attributes["safe_mcp.receipt_id"] = exc.receipt_id


class Telemetry:
    """Spans and receipt log records for one server. Inert (and importing nothing) without `[telemetry]`."""

    def __init__(self, settings: TelemetrySettings | None, *, source: str,
                 receipt: Callable[[str], Receipt | None], version: str, scrub: Scrubber | None = None) -> None:
        """Resolve the receiver's headers now, so a missing secret stops the server before it serves; each
        resolved secret joins `scrub`, so no log line, result or receipt can carry it.

        Raises:
            ConfigError: a header's secret reference names nothing.
        """
        from safe_mcp.trust.secrets import resolve_ref

        self.settings = settings
        self._receipt, self._version = receipt, version
        self._headers = {name: resolve_ref(value, source=source, key=f"telemetry.headers.{name}")
                         if SECRET_REF.match(value) else value
                         for name, value in (settings.headers.items() if settings else ())}
        if settings is not None and scrub is not None:
            for name, value in settings.headers.items():
                if SECRET_REF.match(value):
                    scrub.add(self._headers[name])
        self._tracer: Tracer | None = None
        self._logger: Logger | None = None
        self._providers: tuple[TracerProvider, LoggerProvider | None] | None = None
        self._queue: queue.SimpleQueue[tuple[Span, CallRecord, int] | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._tracer is not None

    def start(self) -> None:
        """Build the exporters and the worker thread; a no-op without `[telemetry]` or when started."""
        settings = self.settings
        if settings is None or self._tracer is not None:
            return
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        headers = self._headers
        base = settings.otlp_endpoint.rstrip("/")
        resource = Resource.create({"service.name": settings.service_name, "service.version": self._version})
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces",
                                                                               headers=headers)))
        logger_provider = None
        if settings.export_receipts:
            logger_provider = LoggerProvider(resource=resource)
            logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(
                endpoint=f"{base}/v1/logs", headers=headers)))
            self._logger = logger_provider.get_logger("safe_mcp.receipts", self._version)
        self._providers = (tracer_provider, logger_provider)
        self._tracer = tracer_provider.get_tracer("safe_mcp", self._version)
        self._worker = threading.Thread(target=self._drain, name="safe-mcp-telemetry", daemon=True)
        self._worker.start()
        log.info("telemetry: spans%s to %s", " and receipts" if logger_provider else "", base)

    def close(self) -> None:
        """Finish every call handed over so far and flush spans and log records to the receiver."""
        worker, providers = self._worker, self._providers
        self._tracer, self._worker, self._providers = None, None, None  # new calls get no span from here on
        if worker is not None:
            self._queue.put(None)
            worker.join()
        self._logger = None
        if providers is not None:
            tracer_provider, logger_provider = providers
            tracer_provider.shutdown()
            if logger_provider is not None:
                logger_provider.shutdown()

    @contextmanager
    def call(self, tool: str, meta: Mapping[str, Any] | None, headers: Mapping[str, str] | None) -> Iterator[None]:
        """A span around one tool call, child of the caller's `traceparent` (in `_meta`, else an HTTP header)."""
        tracer = self._tracer
        if tracer is None:
            yield
            return
        from opentelemetry.trace import SpanKind

        record = CallRecord()
        token = _current.set(record)
        span = tracer.start_span(f"tools/call {tool}", context=_parent(meta, headers), kind=SpanKind.SERVER,
                                 attributes={"mcp.method.name": "tools/call", "gen_ai.operation.name": "execute_tool",
                                             "gen_ai.tool.name": tool})
        try:
            yield
        except BaseException as exc:
            record.error = record.error or f"{type(exc).__name__}"
            raise
        finally:
            _current.reset(token)
            self._queue.put((span, record, time.time_ns()))

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            span, record, ended = item
            receipt = None
            if record.receipt_id is not None:
                try:
                    receipt = self._receipt(record.receipt_id)
                except SafeMcpError as exc:
                    log.warning("telemetry: cannot read receipt %s: %s", record.receipt_id, exc)
            try:
                self._finish(span, record, receipt, ended)
            except Exception:  # the top level of this thread: one bad call must not end export for the rest
                log.exception("telemetry: could not export the span of receipt %s", record.receipt_id)

    def _finish(self, span: Span, record: CallRecord, receipt: Receipt | None, ended: int) -> None:
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.trace import StatusCode, set_span_in_context

        attrs: dict[str, str | int] = dict(record.attributes)
        if receipt is not None:
            attrs.update({"safe_mcp.target": receipt.target, "safe_mcp.tool": receipt.tool,
                          "safe_mcp.effect": receipt.effect, "safe_mcp.decision": receipt.decision,
                          "safe_mcp.outcome": receipt.outcome})
            if "safe_mcp.rows" not in attrs and receipt.affected is not None:
                attrs["safe_mcp.rows"] = receipt.affected
        span.set_attributes(attrs)
        if record.error is not None:
            span.set_status(StatusCode.ERROR, record.error)
        span.end(end_time=ended)
        if receipt is not None and self._logger is not None:
            body = receipt.model_dump(mode="json")
            self._logger.emit(
                timestamp=ended, context=set_span_in_context(span), severity_number=SeverityNumber.INFO,
                severity_text="INFO", event_name="safe_mcp.receipt", body=json.dumps(body, sort_keys=True),
                attributes={"safe_mcp.receipt_id": receipt.id, **{
                    f"safe_mcp.{k}": body[k] for k in RECEIPT_ATTRS if isinstance(body.get(k), str | int)}})


def _parent(meta: Mapping[str, Any] | None, headers: Mapping[str, str] | None) -> OtelContext:
    """The caller's trace context: `_meta.traceparent` first, then the `traceparent` header; else a new trace."""
    from opentelemetry.context import Context
    from opentelemetry.trace import get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    for carrier in (meta, headers):
        parent = carrier.get("traceparent") if carrier else None
        if carrier is None or not isinstance(parent, str):
            continue
        state = carrier.get("tracestate")
        ctx = TraceContextTextMapPropagator().extract(
            {"traceparent": parent, **({"tracestate": state} if isinstance(state, str) else {})})
        if get_current_span(ctx).get_span_context().is_valid:
            return ctx
    return Context()
