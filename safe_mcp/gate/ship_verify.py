"""`safe-mcp receipts verify --against s3://BUCKET/PREFIX`: the shipped batches, checked on their own (signatures,
digests, one chain) and then against the local ledger, naming the first receipt that was lost or changed."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from safe_mcp.gate.ship_wire import (
    KEY_FILE,
    ShipError,
    aws_error,
    aws_errors,
    gateway_key,
    head_bytes,
    key_id,
    raw_public,
    s3_client,
)
from safe_mcp.state.receipts import GENESIS, canonical_json, receipt_text_hash

if TYPE_CHECKING:
    from safe_mcp.state.store import StateStore
    from safe_mcp.trust.config import Config, ShipSettings

__all__ = ["VerifyAgainst", "parse_s3_url", "verify_against"]


@dataclass
class VerifyAgainst:
    ok: bool
    shipped: int = 0
    batches: int = 0
    unshipped_local: int = 0
    first_bad: str | None = None
    problem: str = ""
    notes: list[str] = field(default_factory=list)


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://BUCKET/PREFIX`.

    Raises:
        ShipError: not an s3:// URL with a bucket.
    """
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise ShipError(f"{url!r} is not s3://BUCKET/PREFIX")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix


def _shipped(s3: Any, settings: ShipSettings) -> Iterator[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """(object key, receipt lines, head record) of every batch, in order."""
    # Every version, not only the latest: a delete marker or a newer version written over a batch must not hide
    # what was shipped under COMPLIANCE retention (each version of a batch has to hold, and agree with the others).
    versions: list[tuple[str, datetime, str]] = []
    try:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=settings.bucket,
                                                                   Prefix=f"{settings.prefix}batches/")
        for page in pages:
            versions += [(v["Key"], v["LastModified"], v["VersionId"]) for v in page.get("Versions", [])]
    except aws_errors() as exc:
        raise aws_error("cannot list", settings, exc) from None
    for name, _when, version in sorted(versions):
        try:
            text = s3.get_object(Bucket=settings.bucket, Key=name, VersionId=version)["Body"].read().decode()
        except aws_errors() as exc:
            raise aws_error(f"cannot read {name} from", settings, exc) from None
        *lines, last = text.rstrip("\n").split("\n")
        try:
            yield name, [json.loads(line) for line in lines], json.loads(last)
        except ValueError:
            yield name, [], {}


def verify_against(store: StateStore, config: Config, url: str, *, s3: Any = None) -> VerifyAgainst:
    """Compare the local ledger with the batches shipped under `url`.

    Not ok, naming the first bad receipt, when a batch's signature, digest or chain does not hold, or when the
    local ledger lacks a shipped receipt (deleted, truncated), differs from it (rewritten) or starts another chain
    (restarted). Local receipts not yet shipped are counted, and fine.

    Raises:
        ShipError: the bucket cannot be listed or read.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    bucket, prefix = parse_s3_url(url)
    base = config.receipts.ship
    from safe_mcp.trust.config import ShipSettings

    settings = ShipSettings(bucket=bucket, prefix=prefix, retention_days=1,
                            region=base.region if base else None, endpoint_url=base.endpoint_url if base else None,
                            profile=base.profile if base else None)
    s3 = s3 or s3_client(settings)
    result = VerifyAgainst(ok=True)
    # The first batch's key signs them all (its oldest version cannot be replaced under COMPLIANCE retention).
    # The gateway's own key should be that key; when it is not, the state directory was replaced: said, and the
    # receipts compared below name what differs.
    local_key = config.state_dir / KEY_FILE
    own = key_id(raw_public(gateway_key(config.state_dir))) if local_key.exists() else None
    trusted: str | None = None
    shipped: list[tuple[int, str, str]] = []  # (seq, id, hash)
    prev = GENESIS

    def bad(where: str, problem: str) -> VerifyAgainst:
        return VerifyAgainst(ok=False, shipped=len(shipped), batches=result.batches, first_bad=where,
                             problem=problem, notes=result.notes)

    for name, lines, record in _shipped(s3, settings):
        result.batches += 1
        head = record.get("head", {})
        try:
            public = base64.b64decode(record["public_key"], validate=True)
            Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(record["signature"]), head_bytes(head))
        except (KeyError, ValueError, InvalidSignature):
            return bad(name, "the batch's head signature does not hold (the object was altered)")
        kid = key_id(public)
        if trusted is None:
            trusted = kid
            if own is None:
                result.notes.append(f"no local shipping key: the batches are checked against key {kid} of the first")
            elif own != kid:
                result.notes.append(f"this gateway's key {own} is not key {kid} that signed the shipped batches: "
                                    "its state directory was replaced or restored from elsewhere")
        if kid != trusted or head.get("key_id") != kid:
            return bad(name, f"the batch is signed by key {kid}, not the gateway's key {trusted}")
        digest = hashlib.sha256("\n".join(canonical_json(x) for x in lines).encode()).hexdigest()
        if digest != head.get("lines_sha256") or not lines:
            return bad(name, "the batch's receipts do not match its signed head (altered)")
        for item in lines:
            seq, rid, body, digest = int(item["seq"]), str(item["id"]), str(item["body"]), str(item["hash"])
            if seq <= len(shipped):  # a batch written again after a crash: it must repeat the same receipts
                if shipped[seq - 1] != (seq, rid, digest):
                    return bad(rid, f"shipped receipt #{seq} appears twice with different contents")
                continue
            if seq != len(shipped) + 1:
                return bad(name, f"shipped receipts #{len(shipped) + 1}-#{seq - 1} are missing from the bucket")
            fields = json.loads(body)
            if receipt_text_hash(body) != digest or fields.get("prev") != prev or fields.get("seq") != seq:
                return bad(rid, f"shipped receipt #{seq} does not hold in its chain")
            shipped.append((seq, rid, digest))
            prev = digest
        if (head.get("seq"), head.get("hash")) != (shipped[-1][0], shipped[-1][2]):
            return bad(name, "the batch's signed head does not match its last receipt")
    result.shipped = len(shipped)
    local_count = 0
    for seq, rid, _body, digest in store.iter_receipts():
        local_count += 1
        if seq > len(shipped):
            continue
        if seq != local_count:  # receipts removed locally before this one
            missing_seq, missing_id, _ = shipped[local_count - 1]
            return bad(missing_id, f"shipped receipt #{missing_seq} {missing_id} is missing from the local ledger "
                                   "(receipts were deleted)")
        _, want_id, want_hash = shipped[seq - 1]
        if (rid, digest) != (want_id, want_hash):
            if seq == 1:
                return bad(want_id, f"the local ledger starts another chain: its receipt #1 is {rid}, the shipped one "
                                    f"is {want_id} (the ledger was restarted or replaced)")
            return bad(want_id, f"local receipt #{seq} differs from the shipped one (the ledger was rewritten)")
    if local_count < len(shipped):
        seq, rid, _ = shipped[local_count]
        return bad(rid, f"shipped receipt #{seq} {rid} is missing from the local ledger ({local_count} local, "
                        f"{len(shipped)} shipped: the ledger was deleted or truncated)")
    local = store.verify()
    if not local.ok:
        return bad(local.first_bad or "?", f"the local ledger's own chain is broken: {local.problem}")
    result.unshipped_local = local_count - len(shipped)
    return result
