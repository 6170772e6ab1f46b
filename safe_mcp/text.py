"""Small text helpers every layer, adapters included, may use for messages people read."""

from __future__ import annotations

__all__ = ["plural"]


def plural(n: int | None, word: str, many: str | None = None) -> str:
    """`1 row`, `2 rows`, `0 rows`; `many` for irregular plurals."""
    if n is None:
        return f"? {many or word + 's'}"
    return f"{n} {word if n == 1 else (many or word + 's')}"
