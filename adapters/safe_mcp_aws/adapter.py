"""AWS: one account, one region, the allow-lists of the target; every call checked before it is sent.

boto3 and botocore are imported on first use, never when the package is imported.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any

from safe_mcp.adapter import Adapter, AdapterSettings, Budget, Call, Classification, Outcome, Preview, Reconciled
from safe_mcp.effects import Effect
from safe_mcp.errors import AdapterError, Drifted, Escalated, TargetUnavailable, TooManyRows
from safe_mcp_aws.classify import classify_operation
from safe_mcp_aws.request import identifiers, parse, refused_out_of_scope, validate
from safe_mcp_aws.results import trim
from safe_mcp_aws.scope import out_of_scope, s3_keys_named
from safe_mcp_aws.settings import AwsSettings, AwsSpec
from safe_mcp_aws.undo_table import CREATES

__all__ = ["AwsAdapter"]

Client = Any
_SAMPLE = 20
_INSTANCE_OPS = frozenset({"StopInstances", "StartInstances", "TerminateInstances", "RebootInstances"})
_S3_OVERWRITES = frozenset({"PutObject", "CopyObject", "CompleteMultipartUpload"})
_S3_OBJECT_OPS = _S3_OVERWRITES | {"DeleteObject", "DeleteObjects"}
_DDB_ITEM_OPS = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})


class AwsAdapter(AwsSpec, Adapter):

    def __init__(self, name: str, settings: AdapterSettings, secrets: Mapping[str, str], *,
                 base_dir: str, state_dir: str) -> None:
        super().__init__(name, settings, secrets, base_dir=base_dir, state_dir=state_dir)
        assert isinstance(settings, AwsSettings)
        self.s = settings
        self._lock = threading.RLock()
        self._botocore: Any = None
        self._session: Any = None
        self._clients: dict[str, Client] = {}
        self._account: str | None = None
        self._hidden: list[str] = [v for v in secrets.values() if v]

    # -------------------------------------------------------------- sessions and clients

    def _sessions(self) -> tuple[Any, Any]:
        with self._lock:
            if self._session is None:
                import boto3.session
                import botocore.session

                bc = botocore.session.get_session()
                keys = {"aws_access_key_id": self.secrets.get("access_key_id"),
                        "aws_secret_access_key": self.secrets.get("secret_access_key"),
                        "aws_session_token": self.secrets.get("session_token")}
                try:
                    if keys["aws_access_key_id"]:
                        session = boto3.session.Session(botocore_session=bc, region_name=self.s.region, **keys)
                    else:
                        session = boto3.session.Session(botocore_session=bc, region_name=self.s.region,
                                                        profile_name=self.s.profile)
                    creds = session.get_credentials()
                except _boto_errors() as exc:
                    raise self._error(exc, "the AWS session") from None
                if creds is not None:
                    frozen = creds.get_frozen_credentials()
                    self._hidden += [v for v in (frozen.access_key, frozen.secret_key, frozen.token) if v]
                self._botocore, self._session = bc, session
            return self._botocore, self._session

    def _client(self, service: str) -> Client:
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                from botocore.config import Config

                _, session = self._sessions()
                extra: dict[str, Any] = {"s3": {"addressing_style": "path"}} if self.s.endpoint_url else {}
                config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                                user_agent_extra="safe-mcp", **extra)
                client = session.client(service, region_name=self.s.region, endpoint_url=self.s.endpoint_url,
                                        config=config)
                self._clients[service] = client
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def _operation(self, service: str, operation: str) -> Any:
        from botocore.exceptions import UnknownServiceError

        bc, _ = self._sessions()
        try:
            model = bc.get_service_model(service)
        except UnknownServiceError:
            near = difflib.get_close_matches(service, bc.get_available_services(), 3)
            raise AdapterError(f"boto3 has no service {service!r}" + (f"; did you mean {', '.join(near)}?" if near
                                                                      else "")) from None
        names = {n: n for n in model.operation_names}
        from botocore import xform_name

        names.update({xform_name(n): n for n in model.operation_names})
        if operation not in names:
            near = difflib.get_close_matches(operation, list(model.operation_names), 3)
            raise AdapterError(f"{service} has no operation {operation!r}" +
                               (f"; did you mean {', '.join(near)}?" if near else ""))
        return model.operation_model(names[operation])

    # -------------------------------------------------------------- contract

    def classify(self, call: Call) -> Classification:
        service, operation, params = parse(call)
        if self.s.services is not None and service not in self.s.services:
            allowed = ", ".join(self.s.services) or "none"
            return refused_out_of_scope(f"service {service!r} is not in this target's services ({allowed})")
        op = self._operation(service, operation)
        service = str(op.service_model.service_name)  # an alias of a service is decided as the service itself
        validate(service, op, params)
        effect, why, compensable = classify_operation(service, op, params, self.s.account)
        detail = {"service": service, "operation": op.name, "key": f"{service}:{op.name}"}
        if effect is Effect.FORBIDDEN:
            return Classification(effect=effect, reason=why, summary=f"{service}.{op.name}", detail=detail)
        problem = out_of_scope(service, op.name, params, self.s, read=effect is Effect.READ)
        if problem:
            return refused_out_of_scope(problem)
        mismatch = self._account_mismatch()
        if mismatch:
            return Classification(effect=Effect.FORBIDDEN, reason=mismatch, summary=f"{service}.{op.name}")
        return Classification(effect=effect, reason=why, summary=f"{service}.{op.name}", detail=detail,
                              compensable=compensable)

    def _account_mismatch(self) -> str:
        with self._lock:
            if self._account is None:
                try:
                    self._account = str(self._client("sts").get_caller_identity()["Account"])
                except _boto_errors() as exc:
                    raise self._error(exc, "sts.GetCallerIdentity (the account check)") from None
        if self._account != self.s.account:
            return (f"the credentials belong to AWS account {self._account}, but target {self.name!r} is for account "
                    f"{self.s.account}; nothing is sent to the wrong account")
        return ""

    def preview(self, call: Call, classification: Classification, budget: Budget) -> Preview:
        if classification.effect is Effect.READ:
            return Preview(effect=Effect.READ, affected=0, notes=["reads change nothing"])
        _, _, params = parse(call)
        service, op = classification.detail.get("service", ""), classification.detail.get("operation", "")
        try:
            return self._measure(service, op, params, classification, budget)
        except _boto_errors() as exc:
            raise self._error(exc, f"{service}.{op} (preview)") from None

    def _measure(self, service: str, op: str, params: dict[str, Any], cls: Classification,
                 budget: Budget) -> Preview:
        from safe_mcp_aws import compensate as comp

        effect, notes, sample = cls.effect, [], []
        affected: int | None = None
        seen: list[Any] = []  # exactly what would change, as it is now: the preview's fingerprint
        if service == "s3" and op in _S3_OBJECT_OPS:
            s3 = self._client("s3")
            bucket, keys = params["Bucket"], s3_keys_named(op, params)
            affected = len(keys)
            if affected > budget.rows_affected:
                raise TooManyRows(affected, budget.rows_affected)
            versioned = comp.s3_versioned(s3, bucket)
            for n, key in enumerate(keys):
                state = comp.s3_state(s3, bucket, key)
                seen.append([bucket, key, state and state["etag"], state and state["version_id"]])
                if n < _SAMPLE:
                    sample.append({"bucket": bucket, "key": key, "exists": state is not None,
                                   "size": state["size"] if state else None})
                if op in _S3_OVERWRITES and state is not None:
                    effect = Effect.DESTRUCTIVE
                    notes.append(f"it overwrites s3://{bucket}/{key} ({state['size']} bytes)")
            total = sum(x["size"] or 0 for x in sample)
            if op.startswith("Delete"):
                notes.append(f"it deletes {affected} keys ({total} bytes in the first {len(sample)})")
            notes.append("the current objects are kept as their versions (versioned bucket)" if versioned
                         else f"the current objects are copied under {self.s.quarantine_prefix} first; undo restores them")
        elif service == "ec2" and op in _INSTANCE_OPS:
            ids = list(params.get("InstanceIds", []))
            affected = len(ids)
            if affected > budget.rows_affected:
                raise TooManyRows(affected, budget.rows_affected)
            states = comp.ec2_instance_states(self._client("ec2"), ids)
            seen.append(states)
            sample = [{"instance": i, "state": states.get(i, "not found")} for i in ids[:_SAMPLE]]
            if op == "TerminateInstances":
                self._refuse_protected(ids)
        elif service == "ec2" and op in {"CreateTags", "DeleteTags"}:
            record = comp.ec2_tags_record(self._client("ec2"), op, params)
            affected = record["affected"]
            seen.append(record)
            sample = [*({"set_back_to": r} for r in record["restore"]), *({"new": r} for r in record["remove"])][:_SAMPLE]
        elif service == "ec2" and op.startswith(("AuthorizeSecurityGroup", "RevokeSecurityGroup")) and \
                params.get("IpPermissions"):
            record = comp.ec2_sg_record(self._client("ec2"), op, params)
            affected = record["affected"]
            seen.append(record["before"])
            sample = [{"rules_now": record["before"][:_SAMPLE]}]
        elif service == "dynamodb" and op in _DDB_ITEM_OPS:
            items = self._ddb_before(op, params, budget)
            affected = len(items)
            seen.extend([i["table"], i["key"], i["before"]] for i in items)
            sample = [{"table": i["table"], "key": i["key"], "action": i["action"], "exists": i["before"] is not None}
                      for i in items[:_SAMPLE]]
            replaced = [i for i in items if i["before"] is not None and i["action"] != "delete"]
            if replaced or any(i["action"] == "delete" for i in items):
                effect = Effect.DESTRUCTIVE
            if replaced:
                notes.append(f"it changes or replaces {len(replaced)} existing items; their before-images are kept")
        elif f"{service}:{op}" in CREATES:
            from safe_mcp_aws import creates

            there = creates.existed(self._client, f"{service}:{op}", params, self.s.region, self.s.account)
            affected = 0 if there else 1
            seen.append(there)
            notes.append("it exists already: the call creates nothing and undo deletes nothing" if there
                         else f"undo runs {CREATES[f'{service}:{op}'].inverse} while it is still empty")
        else:
            notes.append(f"safe-mcp cannot measure {service}.{op} in advance; it does what the operation does")
        dry = self._ec2_dry_run(service, op, params)
        if dry:
            notes.append(dry)
        fingerprint = hashlib.sha256(json.dumps(seen, sort_keys=True, default=str).encode()).hexdigest() \
            if seen else None
        return Preview(effect=effect, affected=affected, sample=self._scrub(sample), notes=notes,
                       fingerprint=fingerprint)

    def _ec2_dry_run(self, service: str, op: str, params: dict[str, Any]) -> str:
        """Ask EC2 itself whether the call would succeed, where the operation has DryRun."""
        if service != "ec2":
            return ""
        from botocore.exceptions import ClientError

        model = self._operation(service, op)
        if model.input_shape is None or "DryRun" not in model.input_shape.members:
            return ""
        from botocore import xform_name

        try:
            getattr(self._client("ec2"), xform_name(op))(**{**params, "DryRun": True})
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "DryRunOperation":
                return "EC2 DryRun: the request would have succeeded"
            return self._scrub_text(f"EC2 DryRun: it would fail: {code}: {exc.response.get('Error', {}).get('Message', '')}")
        return "EC2 DryRun: answered without an error"

    def _refuse_protected(self, ids: list[str]) -> None:
        ec2 = self._client("ec2")
        protected = [i for i in ids if ec2.describe_instance_attribute(InstanceId=i, Attribute="disableApiTermination")
                     .get("DisableApiTermination", {}).get("Value")]
        if protected:
            raise AdapterError(f"instances {', '.join(protected)} have termination protection; nothing was terminated "
                               "(a human must turn protection off outside safe-mcp)")

    def execute(self, call: Call, classification: Classification, budget: Budget) -> Outcome:
        _, _, params = parse(call)
        service, op = classification.detail.get("service", ""), classification.detail.get("operation", "")
        try:
            if classification.effect is Effect.READ:
                return self._read(service, op, params, call.args.get("max_items"), budget)
            return self._write(service, op, params, classification, budget)
        except _boto_errors() as exc:
            raise self._error(exc, f"{service}.{op}") from None

    def _read(self, service: str, op: str, params: dict[str, Any], max_items: Any, budget: Budget) -> Outcome:
        from botocore import xform_name

        client = self._client(service)
        method = xform_name(op)
        truncated = False
        if client.can_paginate(method):
            cap = min(int(max_items or budget.rows_returned), budget.rows_returned)
            result = client.get_paginator(method).paginate(**params, PaginationConfig={"MaxItems": cap}).build_full_result()
            truncated = "NextToken" in result
        else:
            result = getattr(client, method)(**params)
        out = trim(self._redact(service, op, result), self.s.max_body_bytes)
        if service == "s3" and op == "ListBuckets" and self.s.buckets is not None:
            out["Buckets"] = [b for b in out.get("Buckets", [])
                              if any(fnmatch.fnmatchcase(b.get("Name", ""), p) for p in self.s.buckets)]
        if truncated:
            out["truncated"] = True
        body = out.get("Body") if isinstance(out.get("Body"), dict) else None
        summary = f"{service}.{op}" + (" (truncated)" if truncated or (body and body.get("truncated")) else "")
        return Outcome(result=self._scrub(out), summary=summary)

    def _write(self, service: str, op: str, params: dict[str, Any], cls: Classification, budget: Budget) -> Outcome:
        from botocore import xform_name

        from safe_mcp_aws import compensate as comp

        key = f"{service}:{op}"
        self._check_drift(service, op, params, cls, budget)
        record: dict[str, Any] | None = None
        affected = 1
        created: bool | None = None
        if service == "s3" and op in _S3_OBJECT_OPS:
            s3 = self._client("s3")
            bucket, keys = params["Bucket"], s3_keys_named(op, params)
            affected = len(keys)
            if affected > budget.rows_affected:
                raise TooManyRows(affected, budget.rows_affected)
            if op in _S3_OVERWRITES and budget.allowed_effect.rank < Effect.DESTRUCTIVE.rank:
                state = comp.s3_state(s3, bucket, keys[0])
                if state is not None:
                    why = f"it overwrites s3://{bucket}/{keys[0]} ({state['size']} bytes)"
                    raise Escalated(Effect.DESTRUCTIVE, why, self._measure(service, op, params, cls, budget))
            record = {"op": "s3_restore", "items": comp.s3_keep(s3, bucket, keys, self.s.quarantine_prefix),
                      "affected": affected}
        elif service == "ec2" and op in _INSTANCE_OPS:
            ids = list(params.get("InstanceIds", []))
            affected = len(ids)
            if affected > budget.rows_affected:
                raise TooManyRows(affected, budget.rows_affected)
            states = comp.ec2_instance_states(self._client("ec2"), ids)
            if op == "TerminateInstances":
                self._refuse_protected(ids)
            elif op == "StopInstances":
                back = [i for i in ids if states.get(i) in {"running", "pending"}]
                record = {"op": "ec2_start", "instance_ids": back, "before": states, "affected": len(back)}
            elif op == "StartInstances":
                back = [i for i in ids if states.get(i) in {"stopped", "stopping"}]
                record = {"op": "ec2_stop", "instance_ids": back, "before": states, "affected": len(back)}
        elif key in {"ec2:CreateTags", "ec2:DeleteTags"}:
            record = comp.ec2_tags_record(self._client("ec2"), op, params)
            affected = record["affected"]
        elif op.startswith(("AuthorizeSecurityGroup", "RevokeSecurityGroup")) and service == "ec2" \
                and params.get("IpPermissions"):
            record = comp.ec2_sg_record(self._client("ec2"), op, params)
            affected = record["affected"]
        elif service == "dynamodb" and op in _DDB_ITEM_OPS:
            items = self._ddb_before(op, params, budget)
            existing = [i for i in items if i["before"] is not None and i["action"] != "delete"]
            if existing and budget.allowed_effect.rank < Effect.DESTRUCTIVE.rank:
                why = f"it changes or replaces {len(existing)} existing items (first: {existing[0]['key']})"
                raise Escalated(Effect.DESTRUCTIVE, why, self._measure(service, op, params, cls, budget))
            record = {"op": "ddb_items", "items": items, "affected": len(items)}
        elif key in CREATES:
            from safe_mcp_aws import creates

            created = not creates.existed(self._client, key, params, self.s.region, self.s.account)
        try:
            response = getattr(self._client(service), xform_name(op))(**params)
        except _boto_errors():
            if record and record.get("op") == "s3_restore":
                self._drop_quarantine(record["items"])
            raise
        if record and record.get("op") == "s3_restore":
            self._settle_s3(op, response, record)
        elif record and record.get("op") == "ddb_items":
            from safe_mcp_aws import dynamo

            record["items"] = dynamo.after(self._client("dynamodb"), record["items"])
            affected = record["affected"] = len(record["items"])
        elif key == "sqs:ReceiveMessage":
            got = response.get("Messages", [])
            record = {"op": "sqs_visible", "queue_url": params["QueueUrl"], "affected": len(got),
                      "messages": [{"message_id": m.get("MessageId"), "handle": m.get("ReceiptHandle")} for m in got]}
            affected = len(got)
        elif created is not None:
            from safe_mcp_aws import creates

            record = creates.record(key, params, response, existed_before=not created)
            affected = int(record["affected"])
        result = trim(self._redact(service, op, response), self.s.max_body_bytes)
        return Outcome(result=self._scrub(result), affected=affected, compensation=record,
                       summary=f"{service}.{op}")

    def _check_drift(self, service: str, op: str, params: dict[str, Any], cls: Classification,
                     budget: Budget) -> None:
        """At confirm: the target must still be as the preview showed, or nothing is sent."""
        expect = budget.expect
        if expect is None or expect.fingerprint is None:
            return
        now = self._measure(service, op, params, cls, budget)
        if now.fingerprint != expect.fingerprint:
            raise Drifted(now.effect, f"{service}.{op}: what it would change moved on since the preview "
                                      f"({now.affected} items now, {expect.affected} then); nothing was sent", now)

    def _ddb_before(self, op: str, params: Mapping[str, Any], budget: Budget) -> list[dict[str, Any]]:
        from safe_mcp_aws import dynamo

        ddb = self._client("dynamodb")
        named = dynamo.items_named(ddb, op, params)
        if len(named) > budget.rows_affected:
            raise TooManyRows(len(named), budget.rows_affected)
        return dynamo.before(ddb, named)

    def _redact(self, service: str, op: str, response: Any) -> Any:
        """Members botocore marks sensitive never reach the agent, a receipt or the state store."""
        from safe_mcp_aws.sensitive import redact

        return redact(response, self._operation(service, op).output_shape)

    def _settle_s3(self, op: str, response: Mapping[str, Any], record: dict[str, Any]) -> None:
        """Fill in what each key holds after the call, so undo can tell when it moved on."""
        items: list[dict[str, Any]] = record["items"]
        if op in {"PutObject", "CompleteMultipartUpload"}:
            items[0]["after_etag"] = response.get("ETag")
        elif op == "CopyObject":
            items[0]["after_etag"] = (response.get("CopyObjectResult") or {}).get("ETag")
        else:
            failed = {e.get("Key") for e in response.get("Errors", [])}
            kept = [i for i in items if i["key"] not in failed and i["mode"] != "absent"]
            self._drop_quarantine([i for i in items if i not in kept])
            for i in kept:
                i["after_etag"] = None
            record["items"] = kept

    def _drop_quarantine(self, items: list[dict[str, Any]]) -> None:
        s3 = self._client("s3")
        for item in items:
            if item.get("mode") == "quarantine":
                s3.delete_object(Bucket=item["bucket"], Key=item["quarantine_key"])

    def compensate(self, compensation: Mapping[str, Any], budget: Budget) -> Outcome:
        from safe_mcp_aws import compensate as comp

        try:
            n, summary = comp.apply(self._client, compensation)
        except _boto_errors() as exc:
            raise self._error(exc, "undo") from None
        return Outcome(affected=n, summary=summary, result={"restored": n})

    def redacted_args(self, call: Call) -> dict[str, Any]:
        """The call's arguments with every input member botocore marks sensitive (a new password, a
        secret's value) replaced, for receipts and the preview shown to the agent."""
        try:
            service, operation, params = parse(call)
            model = self._operation(service, operation)
        except AdapterError:
            return dict(call.args)
        from safe_mcp_aws.sensitive import redact

        return {**call.args, "params": redact(params, model.input_shape)}

    def reconcile(self, intent_id: str, call: Call) -> Reconciled:
        """AWS keeps no journal of safe-mcp's intents: say exactly what a human should look at."""
        try:
            service, operation, params = parse(call)
        except AdapterError:
            return super().reconcile(intent_id, call)
        where = identifiers(params)
        return Reconciled(state="unknown", detail=self._scrub_text(
            f"AWS cannot say whether {service}.{operation} of intent {intent_id} ran: check account {self.s.account}, "
            f"region {self.s.region}" + (f", {where}" if where else "") + " by hand (e.g. with the matching "
            "Describe/Get/Head call), then settle it with safe-mcp reconcile"))

    def audit(self) -> dict[str, Any]:
        """Who the credentials are; whether they can write is not measurable without writing."""
        mismatch = self._account_mismatch()
        findings = [mismatch] if mismatch else [f"credentials belong to account {self._account}, as configured"]
        return {"can_write": None, "findings": findings}

    # -------------------------------------------------------------- errors

    def _scrub_text(self, text: str) -> str:
        for value in sorted(self._hidden, key=len, reverse=True):
            if len(value) >= 4:
                text = text.replace(value, "[redacted]")
        return text

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._scrub_text(value)
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._scrub(v) for v in value]
        return value

    def _error(self, exc: Exception, where: str) -> AdapterError:
        """One AdapterError for every botocore failure, with what the agent can do about it."""
        from botocore import exceptions as bx

        if isinstance(exc, bx.ParamValidationError):
            text = f"invalid params for {where}: {exc}"
        elif isinstance(exc, bx.ClientError):
            err = exc.response.get("Error", {})
            text = f"{where} failed: {err.get('Code', 'error')}: {err.get('Message', '')}".rstrip(": ")
        elif isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            return TargetUnavailable(f"no AWS credentials for target {self.name!r}",
                                     "set profile, or access_key_id/secret_access_key references, or the AWS_* "
                                     "environment variables")
        elif isinstance(exc, bx.ProfileNotFound):
            return TargetUnavailable(f"AWS profile {self.s.profile!r} is not configured on this machine",
                                     "add the profile to ~/.aws/config or change the target's profile")
        elif isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError)):
            return TargetUnavailable(self._scrub_text(f"{where}: cannot reach AWS ({type(exc).__name__})"),
                                     "check the network or the target's endpoint_url; nothing is known to have run")
        elif isinstance(exc, bx.BotoCoreError):
            text = f"{where} failed: {exc}"
        else:
            text = f"{where} failed: {type(exc).__name__}"
        return AdapterError(self._scrub_text(text))


def _boto_errors() -> tuple[type[Exception], ...]:
    """The errors botocore raises on purpose (imported lazily, like botocore itself)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)
