"""EC2 tag and security-group changes record their before state; undo sets it back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_support import aws_config, run_instance, unique
from support import call, connect

pytestmark = pytest.mark.anyio


async def test_tags_and_security_group_rules_undo(tmp_path: Path, moto_endpoint: str,
                                                  boto: Callable[[str], Any]) -> None:
    ec2 = boto("ec2")
    instance = run_instance(ec2)
    ec2.create_tags(Resources=[instance], Tags=[{"Key": "env", "Value": "staging"}, {"Key": "owner", "Value": "ops"}])
    group = ec2.create_security_group(GroupName=unique("sg"), Description="test")["GroupId"]
    rule = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}

    def tags() -> dict[str, str]:
        found = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [instance]}])["Tags"]
        return {t["Key"]: t["Value"] for t in found}

    def ingress() -> list[Any]:
        return list(ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["IpPermissions"])

    # the agent may confirm irreversible calls here, so that the security-group rule below can run
    async with connect(aws_config(tmp_path, moto_endpoint, tail='irreversible = "agent"')) as client:
        done = await call(client, "aws_call", target="cloud", service="ec2", operation="CreateTags",
                          params={"Resources": [instance], "Tags": [{"Key": "env", "Value": "prod"},
                                                                    {"Key": "new", "Value": "1"}]})
        assert done["effect"] == "write" and done["affected"] == 2
        assert tags() == {"env": "prod", "owner": "ops", "new": "1"}
        await call(client, "undo", receipt_id=done["receipt_id"])
        assert tags() == {"env": "staging", "owner": "ops"}

        pending = await call(client, "aws_call", target="cloud", service="ec2", operation="DeleteTags",
                             params={"Resources": [instance], "Tags": [{"Key": "env"}, {"Key": "owner"}]})
        assert pending["effect"] == "destructive" and pending["affected"] == 2
        done = await call(client, "confirm", action_id=pending["pending"]["action_id"])
        assert tags() == {}
        await call(client, "undo", receipt_id=done["receipt_id"])
        assert tags() == {"env": "staging", "owner": "ops"}

        # adding a rule is network exposure: irreversible (a human approves), though its undo is still recorded
        pending = await call(client, "aws_call", target="cloud", service="ec2",
                             operation="AuthorizeSecurityGroupIngress", params={"GroupId": group, "IpPermissions": [rule]})
        assert pending["status"] == "pending" and pending["effect"] == "irreversible"
        assert ingress() == []
        done = await call(client, "confirm", action_id=pending["pending"]["action_id"])
        assert len(ingress()) == 1
        await call(client, "undo", receipt_id=done["receipt_id"])
        assert ingress() == []
