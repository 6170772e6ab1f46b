"""The headless secrets backend and the log scrubber.

Machines without an OS keyring (servers, containers, CI) keep secrets in a TOML file named by
`SAFE_MCP_SECRETS_FILE`: `NAME = "value"` lines, readable by its owner only (mode 0600, refused otherwise).
`keyring:NAME` references then resolve from that file instead of the keyring.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tomllib
from pathlib import Path

from safe_mcp.errors import ConfigError
from safe_mcp.trust.scrub import Scrubber

__all__ = ["ScrubFilter", "file_secret", "install_log_scrubber", "secrets_file", "store_secret"]


def secrets_file() -> Path | None:
    value = os.environ.get("SAFE_MCP_SECRETS_FILE")
    return Path(value) if value else None


def _read(path: Path, source: str, key: str) -> dict[str, object]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(source, key, f"cannot read the secrets file {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(source, key, f"the secrets file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o})",
                          f"chmod 600 {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(source, key, f"the secrets file {path} is not valid TOML: {type(exc).__name__}",
                          'it holds NAME = "value" lines') from None


def file_secret(path: Path, name: str, *, source: str, key: str) -> str:
    """The secret `name` from the secrets file `path`.

    Raises:
        ConfigError: the file is unreadable, readable by others, invalid, or lacks `name`.
    """
    value = _read(path, source, key).get(name)
    if not isinstance(value, str) or not value:
        raise ConfigError(source, key, f"the secrets file {path} has no secret named {name!r}",
                          f"run: SAFE_MCP_SECRETS_FILE={path} safe-mcp secrets set {name}")
    return value


def store_secret(name: str, value: str, file: str | None = None) -> Path:
    """Add or replace `name` in the secrets file (created 0600), written atomically.

    Raises:
        ConfigError: no file given, an empty value, or the existing file is unsafe.
    """
    path = Path(file) if file else secrets_file()
    if path is None:
        raise ConfigError("secrets", "--file", "no secrets file", "pass --file F or set SAFE_MCP_SECRETS_FILE")
    if not value:
        raise ConfigError("secrets", name, "empty secret, nothing stored")
    data = _read(path, str(path), name)
    data[name] = value
    body = "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in sorted(data.items()))
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(body)
    os.replace(tmp, path)
    return path


class ScrubFilter(logging.Filter):
    """Removes every secret value from a log record's message and arguments before any handler sees it."""

    def __init__(self, scrub: Scrubber) -> None:
        super().__init__()
        self.scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        # Scrub in place, keeping the record's shape: formatters such as uvicorn's access log unpack
        # `record.args` themselves and fail (loudly, on every request) when it is replaced.
        if isinstance(record.msg, str):
            record.msg = self.scrub.text(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self.scrub.text(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self.scrub.text(v) if isinstance(v, str) else v for k, v in record.args.items()}
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        scrubbed = self.scrub.text(message)
        if scrubbed != message:  # a secret inside a non-string argument: fall back to the rendered text
            record.msg, record.args = scrubbed, ()
        if record.exc_info:
            import traceback

            record.exc_text = self.scrub.text("".join(traceback.format_exception(*record.exc_info)))
            record.exc_info = None
        return True


def install_log_scrubber(scrub: Scrubber) -> None:
    """Scrub every record that reaches the root logger's handlers (and every handler added to it)."""
    f = ScrubFilter(scrub)
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(f)
    for name in ("safe_mcp", "mcp", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(f)
