"""Scale-in protection of a worker host in an EC2 Auto Scaling group (infra/worker-pool.yaml, issue 16).

A worker host is protected from scale-in while any Machine task works on it, and unprotected when idle, so that
target tracking only ever removes idle hosts. A host the group terminates anyway (an instance refresh, a failed
health check, a manual scale-in of a protected group) waits in the ``Terminating:Wait`` state of the group's
lifecycle hook: the guard stops the worker taking new tasks (``--drain-command``, e.g. Celery's
``cancel_consumer``), keeps the hook alive with heartbeats while tasks still work, and completes the lifecycle
action once none does.

A task works on the host while its work folder ``<scratch>/run-<id>/`` exists (:mod:`openaddr.machine.scratch`:
created when processing starts, removed when it ends, swept after a kill). Counting folders errs on the safe side:
the folder of a killed task counts as busy until the next task on the host sweeps it.

``python -m openaddr.scalein --group NAME [--instance-id ID] [--scratch DIR] [--drain-command CMD]`` runs the loop
on the host (infra/ runs it beside the worker); :class:`ScaleInGuard` is the one step it repeats. Only boto3 and
the instance metadata service (IMDSv2) are used; the IAM it needs: ``autoscaling:SetInstanceProtection``,
``autoscaling:RecordLifecycleActionHeartbeat``, ``autoscaling:CompleteLifecycleAction`` on its own group.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from openaddr.machine.scratch import LOCK_SUFFIX, WORK_PREFIX

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

#: The instance metadata service (IMDSv2: a session token first).
IMDS_URL = "http://169.254.169.254"
#: Seconds between two steps of the loop.
INTERVAL = 30.0
#: The lifecycle hook's name in infra/worker-pool.yaml.
HOOK_NAME = "drain-before-terminate"
#: Seconds between two heartbeats of a pending lifecycle action (the hook's heartbeat timeout is 15 minutes).
HEARTBEAT_EVERY = 300.0


def busy_tasks(scratch: Path) -> int:
    """How many tasks work on this host: the work folders in ``scratch`` (a missing folder: none)."""
    try:
        return sum(
            1
            for path in scratch.iterdir()
            if path.name.startswith(WORK_PREFIX) and not path.name.endswith(LOCK_SUFFIX) and path.is_dir()
        )
    except FileNotFoundError:
        return 0


class InstanceMetadata:
    """The instance's id and the Auto Scaling group's intended lifecycle state, from IMDSv2.

    :param base_url: the metadata service (a loopback fake in tests)
    """

    def __init__(self, base_url: str = IMDS_URL, timeout: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str) -> str | None:
        token = requests.put(
            f"{self.base_url}/latest/api/token",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"},
            timeout=self.timeout,
        )
        token.raise_for_status()
        answer = requests.get(
            f"{self.base_url}/latest/meta-data/{path}",
            headers={"X-aws-ec2-metadata-token": token.text},
            timeout=self.timeout,
        )
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return answer.text.strip()

    def instance_id(self) -> str:
        """This instance's id."""
        value = self._get("instance-id")
        if not value:
            raise RuntimeError(f"the instance metadata service at {self.base_url} has no instance-id")
        return value

    def target_lifecycle_state(self) -> str | None:
        """``InService``, ``Terminated``, … as the group intends it, or None outside a group."""
        return self._get("autoscaling/target-lifecycle-state")


@dataclass
class ScaleInGuard:
    """One worker host's protection and lifecycle action.

    :param client: a boto3 ``autoscaling`` client
    :param group: the host's Auto Scaling group
    :param instance_id: the host's instance id
    :param drain: stops the worker taking new tasks (called once, when the host is to terminate)
    """

    client: Any
    group: str
    instance_id: str
    drain: Callable[[], None] = lambda: None
    protected: bool | None = None
    draining: bool = False
    completed: bool = False
    last_heartbeat: float = field(default=float("-inf"))

    def protect(self, busy: bool) -> None:
        """Protect the host from scale-in while ``busy``, unprotect it when idle (a call only on a change)."""
        if busy == self.protected:
            return
        self.client.set_instance_protection(
            AutoScalingGroupName=self.group, InstanceIds=[self.instance_id], ProtectedFromScaleIn=busy
        )
        log.info("%s: scale-in protection %s", self.instance_id, "on" if busy else "off")
        self.protected = busy

    def step(self, busy: int, target_state: str | None, now: float) -> None:
        """One pass of the loop: ``busy`` tasks work here and the group intends ``target_state``.

        In service: protection follows ``busy``. To be terminated: drain once, heartbeat the lifecycle action while
        tasks work, complete it (``CONTINUE``) when none does.
        """
        if target_state != "Terminated":
            self.protect(busy > 0)
            return
        if self.completed:
            return
        if not self.draining:
            log.info("%s: terminating: the worker takes no new task", self.instance_id)
            self.drain()
            self.draining = True
        if busy:
            if now - self.last_heartbeat >= HEARTBEAT_EVERY:
                self.client.record_lifecycle_action_heartbeat(
                    LifecycleHookName=HOOK_NAME, AutoScalingGroupName=self.group, InstanceId=self.instance_id
                )
                self.last_heartbeat = now
                log.info("%s: %d task(s) still working; lifecycle action kept", self.instance_id, busy)
            return
        self.client.complete_lifecycle_action(
            LifecycleHookName=HOOK_NAME,
            AutoScalingGroupName=self.group,
            InstanceId=self.instance_id,
            LifecycleActionResult="CONTINUE",
        )
        self.completed = True
        log.info("%s: no task left; termination may go on", self.instance_id)


def _drain_command(command: str | None) -> Callable[[], None]:
    if not command:
        return lambda: None
    arguments = shlex.split(command)

    def drain() -> None:
        result = subprocess.run(arguments, check=False, capture_output=True, text=True, timeout=120)
        if result.returncode:
            log.error(
                "drain command %s failed (%d): %s", arguments[0], result.returncode, result.stderr.strip()
            )

    return drain


def main(argv: Sequence[str] | None = None) -> int:
    """The guard's loop on a worker host (see the module docstring)."""
    import boto3

    parser = argparse.ArgumentParser(prog="python -m openaddr.scalein", description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", required=True, help="the host's Auto Scaling group")
    parser.add_argument("--instance-id", help="default: from the instance metadata service")
    parser.add_argument("--scratch", type=Path, default=Path("/var/lib/openaddr/scratch"))
    parser.add_argument("--drain-command", help="stops the worker taking new tasks (run once, shell words)")
    parser.add_argument("--interval", type=float, default=INTERVAL)
    parser.add_argument("--metadata-url", default=IMDS_URL)
    parser.add_argument("--endpoint-url", help="an Auto Scaling API endpoint (tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    metadata = InstanceMetadata(args.metadata_url)
    guard = ScaleInGuard(
        client=boto3.client("autoscaling", endpoint_url=args.endpoint_url),
        group=args.group,
        instance_id=args.instance_id or metadata.instance_id(),
        drain=_drain_command(args.drain_command),
    )
    while not guard.completed:
        try:
            guard.step(busy_tasks(args.scratch), metadata.target_lifecycle_state(), time.monotonic())
        except Exception:  # a failed call is logged and tried again at the next step; the loop never stops
            log.exception("%s: scale-in guard step failed", guard.instance_id)
        time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
