"""Fixtures of the oidc tests (they live in oidc_support.py, which test modules import by that name)."""

from oidc_support import provider  # noqa: F401
