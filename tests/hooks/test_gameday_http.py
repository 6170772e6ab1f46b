"""`gameday` on http targets: a refund retried five times and a destructive operation without a
compensation, decided by the gate with nothing sent (the real test API counts every request it gets)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "http"))

from apis import TOKEN, Payments
from http_support import BILLING
from support import write_config

from safe_mcp.gate.gameday import Row, exit_code, run_gameday
from safe_mcp.trust.config import load_config

DELETE_OP = """
[[targets.billing.operations]]
name = "delete_customer"
method = "DELETE"
path = "/v1/customers/{{id}}"
"""


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Payments]:
    monkeypatch.setenv("BILLING_TOKEN", TOKEN)
    with Payments().serving() as served:
        assert isinstance(served, Payments)
        yield served


def play(tmp_path: Path, api: Payments, head: str = "", extra: str = "") -> list[Row]:
    text = textwrap.dedent(head) + BILLING.format(url=api.url, timeout=5, retries=0) + extra.format()
    rows = run_gameday(load_config(write_config(tmp_path, text)))
    assert api.seen == [] and api.refunds == {}, "gameday sent nothing to the API"
    return rows


def row(rows: list[Row], start: str) -> Row:
    [found] = [r for r in rows if r.scenario.startswith(start)]
    return found


def test_a_refund_retried_five_times_that_would_run_five_times_fails(tmp_path: Path, api: Payments) -> None:
    rows = play(tmp_path, api, extra=DELETE_OP)
    refund = row(rows, "a refund retried 5 times (refund)")
    assert refund.passed is False and "5 refunds would go through" in refund.happened
    assert "as Idempotency-Key" in refund.happened and refund.happened.startswith("dry run, nothing sent")
    assert exit_code(rows) == 1


@pytest.mark.parametrize("head", [
    '[confirm]\nwrite = "human"\n',
    "[limits]\nwrites_per_minute = 1\n",
    '[confirm]\nwrite = "deny"\n',
])
def test_a_refund_retried_five_times_is_contained_by_a_human_a_budget_or_a_denial(
        tmp_path: Path, api: Payments, head: str) -> None:
    rows = play(tmp_path, api, head=head)
    assert row(rows, "a refund retried 5 times").passed is True, rows


def test_a_destructive_operation_without_a_compensation_waits_for_a_human(tmp_path: Path, api: Payments) -> None:
    rows = play(tmp_path, api, extra=DELETE_OP)
    found = row(rows, "a destructive operation without a compensation (delete_customer)")
    assert found.passed is True and "held for human confirmation" in found.happened


def test_a_destructive_operation_an_agent_may_confirm_itself_fails(tmp_path: Path, api: Payments) -> None:
    rows = play(tmp_path, api, head='[confirm]\nirreversible = "agent"\n', extra=DELETE_OP)
    found = row(rows, "a destructive operation without a compensation")
    assert found.passed is False and "held for agent confirmation" in found.happened


def test_operations_with_a_compensation_are_not_played_as_uncompensated(tmp_path: Path, api: Payments) -> None:
    rows = play(tmp_path, api)
    assert not [r for r in rows if r.scenario.startswith("a destructive operation")]
