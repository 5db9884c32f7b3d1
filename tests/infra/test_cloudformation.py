"""infra/worker-pool.yaml, the EC2 worker pool (issue 16, part 3): cfn-lint and checkov pass it and catch a
fault, the least-privilege IAM holds, and the hosts' user data is a valid shell script that starts the workers
with the queues the DAGs use. Nothing is deployed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

TEMPLATE = ROOT / "infra" / "worker-pool.yaml"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags, each read as ``{"Fn::…": value}``."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    name = "Ref" if suffix == "Ref" else ("Fn::GetAtt" if suffix == "GetAtt" else f"Fn::{suffix}")
    return {name: value}


_Loader.add_multi_constructor("!", _tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    document: dict[str, Any] = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    return document


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def _cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), "--format", "parseable", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_cfn_lint_passes_the_template() -> None:
    done = _cfn_lint(TEMPLATE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_cfn_lint_finds_a_fault(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = TEMPLATE.read_text().replace("MinSize: !Ref LargeMinSize", "MinSise: !Ref LargeMinSize", 1)
    text = text.replace("PolicyType: TargetTrackingScaling", "PolicyType: TargetTracking", 1)
    broken.write_text(text)
    done = _cfn_lint(broken)
    assert done.returncode != 0
    assert "MinSise" in done.stdout, done.stdout
    assert "TargetTracking" in done.stdout, done.stdout


@pytest.fixture(scope="module")
def checkov(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[str]]]:
    """checkov over the template and a copy with IMDSv1 left on, in one run (it takes ~20 s on its own):
    check ids by outcome (``passed``, ``failed``, ``skipped``), per file name."""
    assert CHECKOV.exists(), (
        "checkov is not installed: make .venv-checkov/.installed (make test does; its own venv from "
        "infra/checkov.lock, as it conflicts with Airflow's pins)"
    )
    folder = tmp_path_factory.mktemp("checkov")
    good = folder / "worker-pool.yaml"
    good.write_text(TEMPLATE.read_text())
    broken = folder / "broken.yaml"
    broken.write_text(TEMPLATE.read_text().replace("HttpTokens: required", "HttpTokens: optional"))
    done = subprocess.run(
        [str(CHECKOV), "--file", str(good), "--file", str(broken), "--framework", "cloudformation"]
        + ["--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(folder), "BC_SKIP_MAPPING": "TRUE"},
    )
    assert done.stdout.strip(), done.stderr[-2000:]
    report = json.loads(done.stdout)
    outcomes: dict[str, dict[str, list[str]]] = {
        name: {"passed": [], "failed": [], "skipped": []} for name in (good.name, broken.name)
    }
    for outcome in ("passed", "failed", "skipped"):
        for check in report["results"].get(f"{outcome}_checks", []):
            outcomes[Path(check["file_path"]).name][outcome].append(check["check_id"])
    assert report["summary"]["parsing_errors"] == 0
    return outcomes


def test_checkov_passes_the_template(checkov: dict[str, dict[str, list[str]]]) -> None:
    result = checkov["worker-pool.yaml"]
    assert result["failed"] == []
    assert len(result["passed"]) >= 10
    # The one skip, with its reason in the template: the log group's encryption with a customer key.
    assert result["skipped"] == ["CKV_AWS_158"]


def test_checkov_finds_a_fault(checkov: dict[str, dict[str, list[str]]]) -> None:
    failed = set(checkov["broken.yaml"]["failed"])
    assert failed & {"CKV_AWS_341", "CKV_AWS_79"}, failed  # IMDSv1 left on


def _statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    role = template["Resources"]["WorkerRole"]["Properties"]
    return [statement for policy in role["Policies"] for statement in policy["PolicyDocument"]["Statement"]]


def test_the_worker_role_is_least_privilege(template: dict[str, Any]) -> None:
    statements = _statements(template)
    assert all(statement["Effect"] == "Allow" for statement in statements)
    actions = [
        action
        for statement in statements
        for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
    ]
    assert not [action for action in actions if "*" in action], "wildcard actions"
    assert len(actions) == len(set(actions))
    for statement in statements:
        if statement["Resource"] == "*":
            # Only the two actions AWS gives no resource to, and the metric held to its namespace.
            assert statement["Action"] in ("ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"), statement
            if statement["Action"] == "cloudwatch:PutMetricData":
                assert statement["Condition"]["StringEquals"]["cloudwatch:namespace"] == {
                    "Ref": "MetricNamespace"
                }
    autoscaling = next(s for s in statements if "autoscaling:SetInstanceProtection" in s["Action"])
    assert sorted(autoscaling["Action"]) == [
        "autoscaling:CompleteLifecycleAction",
        "autoscaling:RecordLifecycleActionHeartbeat",
        "autoscaling:SetInstanceProtection",
    ]
    # Its own groups only (named <stack>-standard and <stack>-large).
    assert autoscaling["Resource"]["Fn::Sub"].endswith(":autoScalingGroupName/${AWS::StackName}-*")
    secrets = next(s for s in statements if s["Action"] == "secretsmanager:GetSecretValue")
    assert secrets["Resource"]["Fn::Sub"].endswith(":secret:${SecretsPrefix}/*")


def test_each_tier_has_its_group_metric_and_hook(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    for group, policy, metric, slots in (
        ("StandardGroup", "StandardTasksPerHost", "MachineTasks", "StandardConcurrency"),
        ("LargeGroup", "LargeTasksPerHost", "MachineLargeTasks", "LargeConcurrency"),
    ):
        properties = resources[group]["Properties"]
        assert properties["MetricsCollection"][0]["Metrics"] == ["GroupInServiceInstances"]
        tracking = resources[policy]["Properties"]["TargetTrackingConfiguration"]
        assert tracking["TargetValue"] == {"Ref": slots}
        metrics = {m["Id"]: m for m in tracking["CustomizedMetricSpecification"]["Metrics"]}
        assert metrics["tasks"]["MetricStat"]["Metric"]["MetricName"] == metric
        assert metrics["tasksPerHost"]["Expression"] == "tasks / hosts"
    # The plugin publishes those metric names.
    from openaddr_airflow.metrics import METRICS

    assert set(METRICS.values()) == {"MachineTasks", "MachineLargeTasks"}
    large_type = template["Parameters"]["LargeInstanceType"]["Default"]
    standard_type = template["Parameters"]["StandardInstanceType"]["Default"]
    assert large_type != standard_type


def _user_data(template: dict[str, Any], launch_template: str) -> str:
    """The host script as EC2 would run it, with the parameters' defaults (or samples) substituted."""
    data = template["Resources"][launch_template]["Properties"]["LaunchTemplateData"]["UserData"][
        "Fn::Base64"
    ]
    header, body = data["Fn::Join"][1]
    assert body == {"Fn::FindInMap": ["HostSetup", "Script", "Body"]}
    samples = {
        "AWS::StackName": "machine",
        "WorkerImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/openaddr-machine:1",
        "ExecutionApiUrl": "https://airflow.internal/execution/",
        "ResultsBucketName": "results",
    }
    defaults = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        return samples.get(name) or defaults[name]

    script = re.sub(r"\$\{([A-Za-z:]+)\}", substitute, header["Fn::Sub"])
    return script + template["Mappings"]["HostSetup"]["Script"]["Body"]


@pytest.mark.parametrize(
    ("launch_template", "workers"),
    [("StandardLaunchTemplate", {"ci": "ci", "batch": "batch"}), ("LargeLaunchTemplate", {"large": "large"})],
)
def test_the_user_data_starts_the_workers_of_its_queues(
    template: dict[str, Any], launch_template: str, workers: dict[str, str], tmp_path: Path
) -> None:
    from openaddr_airflow.operators import QUEUES

    script = _user_data(template, launch_template)
    path = tmp_path / "user-data.sh"
    path.write_text(script)
    bash = shutil.which("bash")
    assert bash
    syntax = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
    specs = re.search(r'^WORKERS="([^"]+)"$', script, re.MULTILINE)
    assert specs
    parsed = {spec.split(":")[0]: spec.split(":")[1] for spec in specs.group(1).split()}
    assert parsed == workers
    assert set(parsed.values()) <= set(QUEUES)
    # Warm shutdown: SIGTERM to the worker only (dumb-init), and docker stop waits past the visibility timeout.
    assert "DUMB_INIT_SETSID=0" in script
    assert "docker stop --time 90000" in script
    assert "-m openaddr.scalein --group $GROUP" in script
