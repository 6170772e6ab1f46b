"""Validating and building a message: no I/O. Everything an agent sends is checked here first.

Addresses are parsed with the email package's strict header parser, one address per list entry;
only the address (never the display name) decides where mail goes, and an address hidden in a
display name must be allowed too. Each address is normalised once (comments dropped, domain as
lower-case ASCII, an IDN domain as its punycode) and that one form is what the allow-list checks,
what goes on the wire (envelope and headers) and what duplicate detection compares. Headers are
built from `Address` objects by `email.policy.SMTP`, which refuses CR/LF itself, after we have
refused every control character already.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, default
from email.utils import format_datetime, make_msgid
from fnmatch import fnmatchcase
from typing import Any

from safe_mcp.errors import AdapterError

__all__ = ["Draft", "ascii_domain", "build", "digest", "fingerprint", "match_allowed", "normalise_address", "validate"]

# A conservative addr-spec: dot-atom local part without `%` or `!` (old relay tricks), ASCII domain.
_LOCAL = r"[A-Za-z0-9#$&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9#$&'*+/=?^_`{|}~-]+)*"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
_ADDR = re.compile(rf"^{_LOCAL}@{_DOMAIN}$")
_LOOKS_LIKE_ADDR = re.compile(r"[^\s<>\"'(),;:]+@[^\s<>\"'(),;:]+")
# C0 controls (tab included), DEL, C1 controls and the Unicode line/paragraph separators.
_HEADER_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MAX_SUBJECT = 400
_MAX_ADDRESS = 320


@dataclass(frozen=True)
class Recipient:
    field: str  # to | cc | bcc | reply_to
    address: str  # the normalised addr-spec: local part as given, domain lower-case ASCII
    display_name: str
    written: str = ""  # the addr-spec as the caller wrote it, for messages

    @property
    def key(self) -> str:
        """The address as compared: the whole addr-spec lower-cased (what every mail system treats as one)."""
        return self.address.lower()

    def header(self) -> Address:
        username, _, domain = self.address.rpartition("@")
        return Address(display_name=self.display_name, username=username, domain=domain)


@dataclass(frozen=True)
class Draft:
    """A validated message, before it has an id or a date."""

    sender: Recipient
    to: tuple[Recipient, ...]
    cc: tuple[Recipient, ...]
    bcc: tuple[Recipient, ...]
    reply_to: Recipient | None
    subject: str
    body: str

    @property
    def recipients(self) -> list[str]:
        """Envelope recipients, each once (bcc included: it is never a header)."""
        seen: dict[str, None] = {}
        for r in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(r.key, None)
        return list(seen)

    def summary(self) -> dict[str, Any]:
        def fmt(rs: tuple[Recipient, ...]) -> list[str]:
            return [str(r.header()) for r in rs]
        return {
            "from": str(self.sender.header()), "to": fmt(self.to), "cc": fmt(self.cc), "bcc": fmt(self.bcc),
            "reply_to": str(self.reply_to.header()) if self.reply_to else None, "subject": self.subject,
            "body_bytes": len(self.body.encode("utf-8")), "recipients": len(self.recipients),
        }


def _text(field: str, value: Any, *, header: bool) -> str:
    if not isinstance(value, str):
        raise AdapterError(f"{field} must be text, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise AdapterError(f"{field} is not valid UTF-8 text (it holds an unpaired surrogate)") from None
    if "\x00" in value:
        raise AdapterError(f"{field} contains a NUL character; refused")
    if header:
        bad = _HEADER_BAD.search(value)
        if bad:
            kind = {"\r": "CR", "\n": "LF"}.get(bad.group(), f"control character U+{ord(bad.group()):04X}")
            raise AdapterError(f"{field} contains {kind}; header values must be one line (header injection refused)")
    return value


def _parse_address(field: str, value: Any) -> Recipient:
    text = _text(field, value, header=True).strip()
    if not text:
        raise AdapterError(f"{field} has an empty address")
    if len(text) > _MAX_ADDRESS:
        raise AdapterError(f"{field} entry is longer than {_MAX_ADDRESS} characters")
    try:
        parsed = default.header_factory("To", text)
    except (ValueError, IndexError, TypeError) as exc:
        raise AdapterError(f"{field} entry {text!r} is not a valid address ({exc})") from None
    if parsed.defects:
        raise AdapterError(f"{field} entry {text!r} is not a valid address ({parsed.defects[0]})")
    if getattr(parsed, "groups", None) and any(g.display_name is not None for g in parsed.groups):
        raise AdapterError(f"{field} entry {text!r} is a group; give plain addresses")
    addresses = parsed.addresses
    if len(addresses) != 1:
        raise AdapterError(f"{field} entry {text!r} holds {len(addresses)} addresses; give one address per list entry")
    addr = addresses[0]
    spec = normalise_address(field, addr.addr_spec)
    return Recipient(field=field, address=spec, display_name=addr.display_name or "", written=addr.addr_spec)


def ascii_domain(domain: str) -> str:
    """`domain` as it is compared and sent: lower-case ASCII, an IDN as its punycode (xn--...).

    A Unicode domain is accepted only when IDNA maps it to itself up to case: a form that mapping
    would silently change (fullwidth letters, a soft hyphen, a sharp s) is refused, because what the
    agent wrote and where the mail would go would then differ.

    Raises:
        ValueError: the domain is not a valid (IDN) domain, or is ambiguous.
    """
    if domain.isascii():
        return domain.lower()
    try:
        ascii_form = domain.encode("idna").decode("ascii").lower()
        back = ascii_form.encode("ascii").decode("idna")
    except UnicodeError as exc:
        raise ValueError(f"{domain!r} is not a valid domain ({exc})") from None
    if back != unicodedata.normalize("NFC", domain).lower():
        raise ValueError(f"the domain {domain!r} would be sent as {ascii_form!r}; write that form if it is meant")
    return ascii_form


def normalise_address(field: str, spec: str) -> str:
    """The addr-spec with its domain as `ascii_domain` gives it (the local part is kept as written).

    Raises:
        AdapterError: not a plain address (user@domain, ASCII local part, no quoting, no % or ! routing).
    """
    local, _, domain = spec.rpartition("@")
    try:
        normal = f"{local}@{ascii_domain(domain)}"
    except ValueError as exc:
        raise AdapterError(f"{field} address {spec!r} has a domain that cannot be used: {exc}") from None
    if not _ADDR.match(normal) or len(normal) > 254:
        raise AdapterError(f"{field} address {spec!r} is not a plain address (user@domain, ASCII, no quoting, "
                           "no % or ! routing)")
    return normal


def _address_list(field: str, value: Any) -> tuple[Recipient, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise AdapterError(f"{field} must be a list of addresses")
    return tuple(_parse_address(field, v) for v in value)


def match_allowed(address: str, patterns: list[str]) -> bool:
    """True when `address` (an addr-spec), normalised, matches one allow-list pattern (patterns are
    normalised by the settings: lower case, punycode domains). An address that cannot be normalised
    matches nothing."""
    local, _, domain = address.rpartition("@")
    try:
        a = f"{local}@{ascii_domain(domain)}".lower()
    except ValueError:
        return False
    return any(fnmatchcase(a, p) for p in patterns)


def validate(args: dict[str, Any], *, sender: str, allow: list[str], max_recipients: int, max_body_bytes: int) -> Draft:
    """Check every part of an email_send call and return the draft it describes.

    Raises:
        AdapterError: bad input or a recipient outside `allow`; the text names the field and value.
    """
    to = _address_list("to", args.get("to"))
    cc = _address_list("cc", args.get("cc"))
    bcc = _address_list("bcc", args.get("bcc"))
    reply_to = _parse_address("reply_to", args["reply_to"]) if args.get("reply_to") is not None else None
    if not to:
        raise AdapterError("to is empty; give at least one recipient")
    subject = _text("subject", args.get("subject", ""), header=True)
    if len(subject) > _MAX_SUBJECT:
        raise AdapterError(f"subject is longer than {_MAX_SUBJECT} characters")
    body = _text("body", args.get("body", ""), header=False)
    size = len(body.encode("utf-8"))
    if size > max_body_bytes:
        raise AdapterError(f"body is {size} bytes, over max_body_bytes = {max_body_bytes}")
    for r in (*to, *cc, *bcc, *((reply_to,) if reply_to else ())):
        if not match_allowed(r.address, allow):
            sent_as = f" (sent as {r.address!r})" if r.written != r.address else ""
            raise AdapterError(f"recipient {r.written!r}{sent_as} (in {r.field}) is outside allow_recipients "
                               f"{allow}; the whole message was refused")
        # NFKC so that a lookalike (a fullwidth @, say) that reads as an address to a person is checked too.
        for hidden in _LOOKS_LIKE_ADDR.findall(unicodedata.normalize("NFKC", r.display_name)):
            if not match_allowed(hidden, allow):
                raise AdapterError(f"the display name of {r.address!r} (in {r.field}) names {hidden!r}, which is "
                                   f"outside allow_recipients {allow}; the whole message was refused")
    draft = Draft(sender=_parse_address("from", sender), to=to, cc=cc, bcc=bcc, reply_to=reply_to,
                  subject=subject, body=body)
    if len(draft.recipients) > max_recipients:
        raise AdapterError(f"{len(draft.recipients)} recipients, over max_recipients = {max_recipients}")
    return draft


def digest(draft: Draft) -> str:
    """The same digest for the same mail to the same people (for likely-duplicate detection).

    Compared: the set of normalised recipients, whichever of to/cc/bcc holds them and in any order
    (each of them would get the mail twice), the subject with its whitespace collapsed and the body
    with its line ends normalised. Display names, address case and reply_to do not count.
    """
    doc = {
        "recipients": sorted(draft.recipients),
        "subject": " ".join(draft.subject.split()),
        "body": draft.body.replace("\r\n", "\n").replace("\r", "\n").rstrip(),
    }
    return hashlib.sha256(b"safe-mcp/email/v2\x00" + json.dumps(doc, sort_keys=True).encode()).hexdigest()


def fingerprint(draft: Draft) -> str:
    """Exactly what would be sent (sender, every field with its display names, subject, body): what a
    confirmation was given for. Unlike `digest`, any difference at all changes it."""
    doc = {**draft.summary(), "body": draft.body}
    return hashlib.sha256(b"safe-mcp/email/exact/v1\x00" + json.dumps(doc, sort_keys=True).encode()).hexdigest()


def build(draft: Draft, *, when: float | None = None) -> tuple[bytes, str]:
    """The message as it will go on the wire (no Bcc header) and its Message-ID.

    Raises:
        AdapterError: the email package refused to build it (it should not, after `validate`).
    """
    msg = EmailMessage(policy=SMTP.clone(raise_on_defect=True))
    try:
        msg["From"] = draft.sender.header()
        msg["To"] = [r.header() for r in draft.to]
        if draft.cc:
            msg["Cc"] = [r.header() for r in draft.cc]
        if draft.reply_to:
            msg["Reply-To"] = draft.reply_to.header()
        msg["Subject"] = draft.subject
        msg["Date"] = format_datetime(_utc(when if when is not None else time.time()))
        message_id = make_msgid(domain=draft.sender.address.rpartition("@")[2])
        msg["Message-ID"] = message_id
        msg.set_content(draft.body, charset="utf-8")
        raw = msg.as_bytes()
    except (ValueError, TypeError, UnicodeError) as exc:
        raise AdapterError(f"the message could not be built: {exc}") from None
    return raw, message_id


def _utc(ts: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC)
