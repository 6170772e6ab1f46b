"""The wire's pure parts: every request parses as Python's json does or yields the error to answer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from safe_mcp.faces.strict_args import MAX_DEPTH, SURROGATE_STAND_IN, check_values
from safe_mcp.faces.wire import ParseError, envelope, load, oversize_error, tame


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@pytest.mark.parametrize("levels", [10, 63, 64, 65, 900, 5000, 200_000])
def test_any_nesting_parses_and_what_is_too_deep_stays_too_deep(levels: int) -> None:
    text = '{"a":' + "[" * levels + "]" * levels + "}"
    parsed = tame(load(text))
    assert depth(parsed) == min(levels + 1, 64)
    if levels > MAX_DEPTH:
        assert check_values("t", parsed) is not None


def test_brackets_inside_strings_are_not_nesting() -> None:
    text = '{"s":"' + "[" * 5000 + '","a":' + "[" * 3000 + "]" * 3000 + "}"
    parsed = tame(load(text))
    assert parsed["s"] == "[" * 5000 and depth(parsed["a"]) == 63


@pytest.mark.parametrize("digits", ["9" * 20, "9" * 6000, "-" + "9" * 6000])
def test_integers_past_any_driver_parse_as_out_of_range(digits: str) -> None:
    value = load(f"[{digits}]")[0]
    assert abs(value) >= 2**64
    violation = check_values("t", {"params": [value]})
    assert violation is not None and "beyond 64 bits" in violation.reason


@pytest.mark.parametrize("text", ["{", "[1,]", "{'a':1}", "", "nul"])
def test_what_is_not_json_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        load(text)


def test_lone_surrogates_are_replaced_by_a_refused_stand_in() -> None:
    parsed = tame(load(r'{"k\ud800":"a\udfffb","ok":"\ud83d\ude00"}'))
    assert parsed == {f"k{SURROGATE_STAND_IN}": f"a{SURROGATE_STAND_IN}b", "ok": "\U0001f600"}
    json.dumps(parsed, ensure_ascii=False).encode("utf-8")  # now carried by any serialiser
    assert check_values("t", {"x": parsed[f"k{SURROGATE_STAND_IN}"]}) is not None


def test_envelopes() -> None:
    assert envelope({"jsonrpc": "2.0", "id": 1, "method": "ping"})[1] is None
    assert envelope({"jsonrpc": "2.0", "method": "notifications/initialized"})[1] is None
    assert envelope({"jsonrpc": "2.0", "id": 1, "result": {}})[1] is None
    for bad in [[], 1, {"id": 1, "method": "ping"}, {"jsonrpc": "2.0", "id": True, "method": "ping"},
                {"jsonrpc": "2.0", "id": 1.5, "method": "ping"}, {"jsonrpc": "2.0", "id": 1}]:
        problem = envelope(bad)[1]
        assert problem is not None and problem["error"]["code"] == -32600, bad


def test_an_oversize_answer_names_the_id_only_when_it_leads() -> None:
    assert oversize_error(10, b'{"jsonrpc":"2.0","id":7,"method":"x","params":{')["id"] == 7
    assert oversize_error(10, b'{"id":"abc","jsonrpc":"2.0"')["id"] == "abc"
    assert oversize_error(10, b'{"jsonrpc":"2.0","method":"x","params":{"id":7,')["id"] is None
    assert oversize_error(10, b"garbage")["id"] is None
