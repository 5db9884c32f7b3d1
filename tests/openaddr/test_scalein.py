"""The scale-in guard of a worker host (openaddr/scalein.py, issue 16 part 3).

Scale-in protection against moto's Auto Scaling server on loopback (a real group with real instances). moto does
not implement the lifecycle-action calls (RecordLifecycleActionHeartbeat, CompleteLifecycleAction): those go to a
loopback server of this module that answers them as the Auto Scaling query API does and records them. The
instance metadata service is a loopback IMDSv2 server too.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import pytest

from openaddr.machine.scratch import work_folder
from openaddr.scalein import HEARTBEAT_EVERY, HOOK_NAME, InstanceMetadata, ScaleInGuard, busy_tasks

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

REGION = "us-east-1"
GROUP = "machine-standard"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    missing = str(tmp_path / "no-aws-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def group(s3_server: str, aws_env: None) -> Iterator[tuple[Any, list[str]]]:
    """An Auto Scaling group of two instances on moto's server; yields its client and the instance ids."""
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=s3_server, region_name=REGION)
    autoscaling = boto3.client("autoscaling", endpoint_url=s3_server, region_name=REGION)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    template = ec2.create_launch_template(
        LaunchTemplateName=f"{GROUP}-{id(ec2)}",
        LaunchTemplateData={"ImageId": image, "InstanceType": "t3.micro"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    name = f"{GROUP}-{id(ec2)}"
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateId": template, "Version": "$Latest"},
        MinSize=2,
        MaxSize=4,
        DesiredCapacity=2,
        AvailabilityZones=[f"{REGION}a"],
    )
    instances = [
        i["InstanceId"]
        for i in autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][
            0
        ]["Instances"]
    ]
    assert len(instances) == 2
    try:
        yield autoscaling, name, instances
    finally:
        autoscaling.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)


def _protected(client: Any, instance_id: str) -> bool:
    (instance,) = client.describe_auto_scaling_instances(InstanceIds=[instance_id])["AutoScalingInstances"]
    return bool(instance["ProtectedFromScaleIn"])


def test_a_busy_host_is_protected_and_an_idle_one_is_not(group: Any, tmp_path: Path) -> None:
    client, name, (busy_host, idle_host) = group
    scratch = tmp_path / "scratch"
    guard = ScaleInGuard(client=client, group=name, instance_id=busy_host)
    other = ScaleInGuard(client=client, group=name, instance_id=idle_host)
    other.step(busy_tasks(scratch), "InService", 0.0)
    with work_folder(scratch, "run-17"):
        assert busy_tasks(scratch) == 1
        guard.step(busy_tasks(scratch), "InService", 0.0)
        assert _protected(client, busy_host) is True
        assert _protected(client, idle_host) is False
    assert busy_tasks(scratch) == 0
    guard.step(busy_tasks(scratch), "InService", 30.0)
    assert _protected(client, busy_host) is False


def test_protection_is_only_sent_on_a_change(group: Any, tmp_path: Path) -> None:
    client, name, (host, _) = group
    guard = ScaleInGuard(client=client, group=name, instance_id=host)
    guard.step(1, "InService", 0.0)
    assert _protected(client, host) is True
    # Someone clears it by hand: the guard, believing it set, does not send it again while still busy...
    client.set_instance_protection(AutoScalingGroupName=name, InstanceIds=[host], ProtectedFromScaleIn=False)
    guard.step(2, "InService", 30.0)
    assert _protected(client, host) is False
    # ...and clears/sets on the next change.
    guard.step(0, "InService", 60.0)
    guard.step(1, "InService", 90.0)
    assert _protected(client, host) is True


def test_a_failed_call_is_not_believed_done(group: Any) -> None:
    from botocore.exceptions import ClientError
    from botocore.parsers import ResponseParserError

    client, _, (host, _) = group
    guard = ScaleInGuard(client=client, group="no-such-group", instance_id=host)
    # AWS answers a ValidationError; moto's server a 500 that botocore cannot parse: either way it raises.
    with pytest.raises((ClientError, ResponseParserError)):
        guard.step(1, "InService", 0.0)
    assert guard.protected is None  # tried again at the next step


def test_busy_tasks_counts_work_folders_only(tmp_path: Path) -> None:
    assert busy_tasks(tmp_path / "missing") == 0
    (tmp_path / "run-1").mkdir()
    (tmp_path / "run-1.lock").touch()
    (tmp_path / "run-2").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "run-3").touch()  # a file, not a folder
    assert busy_tasks(tmp_path) == 2


# The lifecycle hook: a loopback Auto Scaling API for the two calls moto lacks ---------------------------------


class _LifecycleAPI(BaseHTTPRequestHandler):
    calls: list[dict[str, str]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        call = dict(parse_qsl(body))
        self.server.calls.append(call)  # type: ignore[attr-defined]
        action = call["Action"]
        payload = (
            f'<{action}Response xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">'
            f"<{action}Result/><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></{action}Response>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def lifecycle_api(aws_env: None) -> Iterator[tuple[Any, list[dict[str, str]]]]:
    import boto3

    server = ThreadingHTTPServer(("127.0.0.1", 0), _LifecycleAPI)
    server.calls = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = boto3.client(
            "autoscaling", endpoint_url=f"http://127.0.0.1:{server.server_port}", region_name=REGION
        )
        yield client, server.calls  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def test_a_terminating_host_drains_heartbeats_and_completes_when_idle(lifecycle_api: Any) -> None:
    client, calls = lifecycle_api
    drained: list[bool] = []
    guard = ScaleInGuard(client=client, group=GROUP, instance_id="i-0abc", drain=lambda: drained.append(True))
    guard.protected = True  # it was working when the group chose to terminate it
    guard.step(2, "Terminated", 0.0)
    guard.step(2, "Terminated", 30.0)  # within the heartbeat period: nothing sent
    guard.step(1, "Terminated", HEARTBEAT_EVERY + 1)
    assert drained == [True]
    assert [call["Action"] for call in calls] == ["RecordLifecycleActionHeartbeat"] * 2
    assert not guard.completed
    guard.step(0, "Terminated", HEARTBEAT_EVERY + 31)
    guard.step(0, "Terminated", HEARTBEAT_EVERY + 61)  # once only
    assert drained == [True]
    assert [call["Action"] for call in calls] == [
        "RecordLifecycleActionHeartbeat",
        "RecordLifecycleActionHeartbeat",
        "CompleteLifecycleAction",
    ]
    last = calls[-1]
    assert last["LifecycleHookName"] == HOOK_NAME
    assert last["AutoScalingGroupName"] == GROUP
    assert last["InstanceId"] == "i-0abc"
    assert last["LifecycleActionResult"] == "CONTINUE"
    assert guard.completed


def test_the_hook_name_is_the_templates() -> None:
    import yaml

    from tests.conftest import ROOT

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load((ROOT / "infra" / "worker-pool.yaml").read_text(), Loader=Loader)  # noqa: S506
    for name in ("StandardGroup", "LargeGroup"):
        (hook,) = template["Resources"][name]["Properties"]["LifecycleHookSpecificationList"]
        assert hook["LifecycleHookName"] == HOOK_NAME
        assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
        # 100 heartbeat timeouts at most: the guard's heartbeats keep a host past the longest deadline (24 h).
        assert HEARTBEAT_EVERY < hook["HeartbeatTimeout"]
        assert 100 * hook["HeartbeatTimeout"] > 24 * 3600


# The instance metadata service (IMDSv2) ----------------------------------------------------------------------


class _IMDS(BaseHTTPRequestHandler):
    def do_PUT(self) -> None:
        assert self.path == "/latest/api/token"
        self._answer(200, "token-1")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != "token-1":
            self._answer(401, "")
            return
        values = self.server.values  # type: ignore[attr-defined]
        key = self.path.removeprefix("/latest/meta-data/")
        if key in values:
            self._answer(200, values[key])
        else:
            self._answer(404, "")

    def _answer(self, status: int, text: str) -> None:
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_instance_metadata_through_imdsv2() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _IMDS)
    server.values = {"instance-id": "i-0abc", "autoscaling/target-lifecycle-state": "Terminated"}  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        metadata = InstanceMetadata(f"http://127.0.0.1:{server.server_port}")
        assert metadata.instance_id() == "i-0abc"
        assert metadata.target_lifecycle_state() == "Terminated"
        del server.values["autoscaling/target-lifecycle-state"]  # type: ignore[attr-defined]
        assert metadata.target_lifecycle_state() is None  # not in a group
        server.values.clear()  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError, match="has no instance-id"):
            metadata.instance_id()
    finally:
        server.shutdown()
        server.server_close()
