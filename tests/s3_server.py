"""Pytest fixtures for a real S3 API: moto's server on loopback (style.md point 13, integration layer).

Loaded as a plugin by ``tests/conftest.py``.
The server runs in a thread of the test process for the whole session; every test gets its own bucket and fake
credentials, so nothing reaches AWS and a developer's ``~/.aws`` is never read.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

REGION = "us-east-1"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 (a free port) and yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Fake AWS credentials and ``OPENADDR_S3_ENDPOINT_URL`` in the environment; yield the endpoint URL."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(name, raising=False)
    missing = str(tmp_path / "no-aws-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("OPENADDR_S3_ENDPOINT_URL", s3_server)
    return s3_server


@pytest.fixture(scope="session")
def s3_client(s3_server: str) -> Any:
    """A plain boto3 S3 client of the loopback server with fake credentials (to set up and inspect buckets)."""
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3_server,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def s3_bucket(s3_env: str, s3_client: Any) -> str:
    """A new empty bucket for this test, publicly readable by bucket policy as in production; yield its name."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{name}/*",
            }
        ],
    }
    s3_client.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
    return name
