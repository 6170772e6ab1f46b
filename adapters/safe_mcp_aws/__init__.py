"""The AWS adapter: every operation boto3 knows, classified from its service model, scoped to one account.

Importing this package imports neither boto3 nor botocore nor the adapter: `AwsSettings` and `AwsSpec` (what the config
needs) come from `safe_mcp_aws.settings`; `AwsAdapter` is imported when first named, boto3 on the first call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safe_mcp_aws.settings import AwsSettings, AwsSpec

if TYPE_CHECKING:
    from safe_mcp_aws.adapter import AwsAdapter

__all__ = ["AwsAdapter", "AwsSettings", "AwsSpec"]


def __getattr__(name: str) -> Any:
    if name == "AwsAdapter":
        from safe_mcp_aws.adapter import AwsAdapter

        return AwsAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
