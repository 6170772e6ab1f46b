"""Members botocore marks `sensitive` (passwords, keys, tokens): found in an operation's output shape, and
redacted from every result. No I/O.

An operation whose purpose is to hand over a credential is refused outright (`credential_point`); any
other sensitive member (a database's pending master password, a function's environment values, a
parameter's value) is replaced by `REDACTED` before the result reaches the agent or a receipt.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

__all__ = ["REDACTED", "credential_point", "redact", "sensitive_paths"]

REDACTED = "[redacted: botocore marks this member sensitive]"

# A member whose name says it is a credential (not an id, name or ARN of one).
_CREDENTIAL = re.compile(r"password|secret|privatekey|plaintext|passphrase|credential|apikey|token|"
                         r"accesskey|sharedsecret|challenge", re.I)
_NOT_CREDENTIAL = re.compile(r"(arn|id|ids|name|names|url|uri|type|date|time|status|count|expir\w*|"
                             r"^next_?token|^pagination_?token|tosample)$", re.I)
# Verbs of operations that exist to read something: their sensitive members are redacted, unless the
# operation's own name says the credential is what it reads (GetPasswordData, GetSecretValue).
_READ_VERBS = frozenset({"Get", "Describe", "List", "Search", "Lookup", "Query", "Scan"})
_CREDENTIAL_WORDS = re.compile(r"Password|Secret|Credential|Token|Auth|Login|Session|Key(?!s?(Id|Arn|Name))|"
                               r"Plaintext|Passphrase")


def sensitive_paths(shape: Any, path: str = "", seen: frozenset[str] = frozenset()) -> Iterator[str]:
    """Paths (".A.B[].C") of every sensitive member reachable from `shape`, walked recursively."""
    if shape is None:
        return
    if shape.metadata.get("sensitive"):
        yield path or "."
        return
    if shape.name in seen:  # recursive shapes (a tree of nodes): each shape is walked once per path
        return
    seen = seen | {shape.name}
    kind = shape.type_name
    if kind == "structure":
        for name, member in shape.members.items():
            yield from sensitive_paths(member, f"{path}.{name}", seen)
    elif kind == "list":
        yield from sensitive_paths(shape.member, f"{path}[]", seen)
    elif kind == "map":
        yield from sensitive_paths(shape.value, f"{path}{{}}", seen)


def _is_credential(path: str) -> bool:
    leaf = re.sub(r"[\[\]{}]", "", path.rsplit(".", 1)[-1])
    return bool(_CREDENTIAL.search(leaf)) and not _NOT_CREDENTIAL.search(leaf)


def credential_point(op: Any, verb: str) -> str:
    """Why handing over a credential is the point of `op` ("" when it is not).

    It is, when a credential-named sensitive member sits at most two levels deep in the output
    (`.Credentials.SecretAccessKey`, `.SecretString`, `.SecretValues[].SecretString`) and the
    operation either is not a read (it creates, rotates, decrypts or assumes) or is named for it.
    """
    found = [p for p in sensitive_paths(op.output_shape) if _is_credential(p)]
    shallow = [p for p in found if p.count(".") <= 2]
    if not shallow:
        return ""
    if verb in _READ_VERBS and not _CREDENTIAL_WORDS.search(op.name):
        return ""
    return f"its result is a credential ({', '.join(sorted(shallow)[:3])}, which botocore marks sensitive)"


def redact(value: Any, shape: Any, seen: int = 0) -> Any:
    """`value` (a botocore response or part of it) with every sensitive member replaced by REDACTED."""
    if shape is None or seen > 64:
        return value
    if shape.metadata.get("sensitive"):
        return REDACTED if value is not None else None
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        return {k: redact(v, shape.members[k], seen + 1) if k in shape.members else v for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [redact(v, shape.member, seen + 1) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: redact(v, shape.value, seen + 1) for k, v in value.items()}
    return value
