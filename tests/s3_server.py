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


class FlakyS3Proxy:
    """A loopback HTTP proxy in front of moto's server that fails chosen ``UploadPart`` requests with a 500 (S3's
    ``InternalError``), to test the uploader's own tries: ``fail_part(number, times)``; ``part_requests(number)``
    counts the requests a part got (failed or forwarded)."""

    def __init__(self, upstream: str) -> None:
        import http.server
        import threading
        from urllib.parse import urlsplit

        self.upstream = urlsplit(upstream)
        self.failures: dict[int, int] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def forward(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail_part(self, number: int, times: int) -> None:
        """Answer the next ``times`` requests for part ``number`` with a 500."""
        with self.lock:
            self.failures[number] = times

    def part_requests(self, number: int) -> int:
        """How many ``UploadPart`` requests part ``number`` got."""
        from urllib.parse import parse_qs, urlsplit

        with self.lock:
            return sum(
                1
                for method, path in self.requests
                if method == "PUT" and parse_qs(urlsplit(path).query).get("partNumber") == [str(number)]
            )

    def handle(self, request: Any) -> None:
        import http.client
        from urllib.parse import parse_qs, urlsplit

        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        part = parse_qs(urlsplit(request.path).query).get("partNumber")
        with self.lock:
            self.requests.append((request.command, request.path))
            fail = bool(part) and request.command == "PUT" and self.failures.get(int(part[0]), 0) > 0
            if fail:
                self.failures[int(part[0])] -= 1
        if fail:
            error = b"<Error><Code>InternalError</Code><Message>injected by the test proxy</Message></Error>"
            request.send_response(500)
            request.send_header("Content-Type", "application/xml")
            request.send_header("Content-Length", str(len(error)))
            request.end_headers()
            request.wfile.write(error)
            return
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("connection", "expect")}
        connection.request(request.command, request.path, body=body or None, headers=headers)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        request.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def flaky_s3(s3_env: str) -> Iterator[FlakyS3Proxy]:
    """A :class:`FlakyS3Proxy` in front of the session's moto server (fake credentials in the environment)."""
    proxy = FlakyS3Proxy(s3_env)
    try:
        yield proxy
    finally:
        proxy.close()
