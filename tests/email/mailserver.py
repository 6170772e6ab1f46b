"""A real SMTP server for the tests: aiosmtpd on 127.0.0.1, recording what it accepts.

`Recorder` accepts everything; `script` makes it answer DATA with scripted replies first (4xx, 5xx),
and `delay_s` makes it slow (to catch a sender mid-send). Not a mock: the adapter speaks real SMTP to it.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> Message:
        return message_from_bytes(self.data)


@dataclass
class Recorder:
    script: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    entered: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.attempts += 1
        if self.script:
            return self.script.pop(0)
        # Kept as soon as the content arrived, like an MTA that queues before it replies.
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content)))
        self.entered.set()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return "250 OK queued as test"


class Server:
    def __init__(self, port: int, recorder: Recorder | None = None, *, user: str | None = None,
                 password: str | None = None) -> None:
        self.port = port
        self.recorder = recorder or Recorder()
        kwargs: dict[str, Any] = {}
        if user:
            def auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
                ok = isinstance(data, LoginPassword) and (data.login, data.password) == (user.encode(), (password or "").encode())
                return AuthResult(success=ok)
            kwargs = {"authenticator": auth, "auth_require_tls": False}
        self.controller = Controller(self.recorder, hostname="127.0.0.1", port=port, **kwargs)

    def __enter__(self) -> Server:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def received(self) -> list[Received]:
        return self.recorder.received
