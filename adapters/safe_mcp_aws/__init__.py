"""The AWS adapter: every operation boto3 knows, classified from its service model, scoped to one account.

Importing this package does not import boto3 or botocore; they are loaded on the first call.
"""

from __future__ import annotations

from safe_mcp_aws.adapter import AwsAdapter
from safe_mcp_aws.settings import AwsSettings

__all__ = ["AwsAdapter", "AwsSettings"]
