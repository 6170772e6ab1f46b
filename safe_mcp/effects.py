"""What a call would do, ranked from harmless to never-allowed."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Effect"]


class Effect(StrEnum):
    """The effect class of a call, decided before it runs.

    Ordered: a higher rank is stricter. Unknown or unparseable calls take the
    strictest class a caller could still be allowed to reach (`irreversible`)
    or `forbidden`; never a looser one.
    """

    READ = "read"
    WRITE = "write"
    DESTRUCTIVE = "destructive"
    IRREVERSIBLE = "irreversible"
    FORBIDDEN = "forbidden"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, other: Effect) -> Effect:
        """The stricter of the two effects."""
        return self if self.rank >= other.rank else other


_RANK = {e: i for i, e in enumerate(Effect)}
