"""A moto server (AWS over real HTTP on 127.0.0.1) for the whole session, and configs that point at it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import MOTO_KEY_ID, MOTO_SECRET, NO_AWS_FILES, environ, moto_server, write_config

KEY_ID, SECRET = MOTO_KEY_ID, MOTO_SECRET
ACCOUNT = "123456789012"  # moto's account
REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with moto_server(KEY_ID, SECRET) as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def aws_env() -> Iterator[None]:
    """Credentials by env: references (as a user would), and no ~/.aws files from this machine."""
    with environ({"SAFE_MCP_TEST_AWS_KEY": KEY_ID, "SAFE_MCP_TEST_AWS_SECRET": SECRET, **NO_AWS_FILES}):
        yield


@pytest.fixture
def boto(moto_endpoint: str) -> Iterator[Callable[[str], Any]]:
    """Plain boto3 clients on the moto server, for arranging and checking state outside safe-mcp."""
    import boto3

    clients: list[Any] = []

    def make(service: str) -> Any:
        c = boto3.client(service, region_name=REGION, endpoint_url=moto_endpoint,
                         aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def aws_config(directory: Path, endpoint: str, *, account: str = ACCOUNT, extra: str = "",
               access: str = "read-write", tail: str = "") -> Path:
    return write_config(directory, f"""
        [targets.cloud]
        kind = "aws"
        region = "{REGION}"
        account = "{account}"
        endpoint_url = "{endpoint}"
        access_key_id = "env:SAFE_MCP_TEST_AWS_KEY"
        secret_access_key = "env:SAFE_MCP_TEST_AWS_SECRET"
        access = "{access}"
        {extra}

        [confirm]
        min_delay_s = 0
        {tail}
        """)


def run_instance(ec2: Any, *, protected: bool = False) -> str:
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    out = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    instance = str(out["Instances"][0]["InstanceId"])
    if protected:  # moto ignores DisableApiTermination on RunInstances; the attribute call it honours
        ec2.modify_instance_attribute(InstanceId=instance, DisableApiTermination={"Value": True})
    return instance
