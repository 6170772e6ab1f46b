"""Fixtures of the aws tests (they live in aws_support.py, which test modules import by that name)."""

from aws_support import aws_env, boto, moto_endpoint  # noqa: F401
