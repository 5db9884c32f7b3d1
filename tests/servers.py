"""Loopback HTTP(S) and FTP servers for download tests, as pytest fixtures.

Fixtures (load with ``pytest_plugins = ["tests.servers"]``):

* ``http_server`` (session): a :class:`LoopbackHTTPServer` on ``127.0.0.1``, serving ``fixtures/machine/data``
  read-only under ``/data/<name>``, plus routes a test registers (``add``, ``add_redirect``, ``add_flaky``, …);
* ``https_server`` (session): the same behind TLS with a freshly generated self-signed certificate (so certificate
  verification fails, as on a server with a broken chain);
* ``ftp_server`` (session): a :class:`LoopbackFTPServer` (pyftpdlib) with an anonymous read-only folder and a
  ``openaddr``/``s3cret`` account with its own folder;
* ``allow_private_urls``: sets ``OPENADDR_ALLOW_PRIVATE_URLS=1`` for one test;
* ``download_settings``: :class:`openaddr.settings.Settings` for loopback servers: private hosts allowed, short
  timeouts, tiny retry delays.

``POST`` requests are recorded with their body and answered by the path's route (a loopback stand-in for a
webhook such as Slack's). Routes are keyed by path (no query); registering a path again replaces its route and resets its counter, so tests
use paths of their own. ``server.hits[path]`` counts requests, ``server.requests`` records their headers.
"""

from __future__ import annotations

import collections
import datetime
import gzip
import ipaddress
import logging
import mimetypes
import shutil
import ssl
import threading
import time
import warnings
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest

from openaddr.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from pathlib import Path


FTP_USER = "openaddr"
FTP_PASSWORD = "s3cret"


@dataclass(frozen=True)
class RecordedRequest:
    """One request the HTTP server received."""

    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_GET(self) -> None:
        owner = self.server.owner
        parts = urlsplit(self.path)
        # Routes are looked up as sent (a %2F stays in its segment), then percent-decoded.
        path = parts.path if parts.path in owner.routes else unquote(parts.path)
        owner.record(RecordedRequest(path, parts.query, {k: v for k, v in self.headers.items()}))
        route = owner.routes.get(path)
        if route is None and path.startswith("/data/"):
            route = owner.data_route(path[len("/data/") :])
        if route is None:
            route = status_route(404, b"no such route\n")
        route(self, dict(parse_qsl(parts.query)))

    def do_POST(self) -> None:
        """Record the request with its body; answer the route as for ``GET`` (404 without one)."""
        owner = self.server.owner
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        owner.record(RecordedRequest(parts.path, parts.query, {k: v for k, v in self.headers.items()}, body))
        route = owner.routes.get(parts.path) or status_route(404, b"no such route\n")
        route(self, dict(parse_qsl(parts.query)))

    def do_HEAD(self) -> None:
        """As ``GET``, without the body (:func:`send` leaves it out)."""
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output is not the place for access logs."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: LoopbackHTTPServer


def send(
    handler: BaseHTTPRequestHandler,
    body: bytes,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    content_length: int | None = None,
) -> None:
    """Write a whole response; ``content_length`` overrides the announced length (``-1``: no header)."""
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    length = len(body) if content_length is None else content_length
    if length >= 0:
        handler.send_header("Content-Length", str(length))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)
    handler.wfile.flush()


def status_route(
    status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
) -> Callable[..., None]:
    """A route answering ``status`` with ``body``."""

    def route(handler: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        send(handler, body, status=status, headers=headers)

    return route


class LoopbackHTTPServer:
    """A threaded HTTP server on ``127.0.0.1`` (port chosen by the system) with pluggable routes.

    :param data_dir: folder served read-only under ``/data/<name>``
    :param ssl_context: serve HTTPS with this server context
    """

    def __init__(self, data_dir: Path, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.data_dir = data_dir
        self.routes: dict[str, Callable[..., None]] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        self.requests: list[RecordedRequest] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        if ssl_context is not None:
            self.httpd.socket = ssl_context.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if ssl_context is not None else "http"
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Release hanging handlers, stop serving and close the socket."""
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.hits[request.path] += 1
            self.requests.append(request)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """The URL of ``path`` on this server (``host`` may be a name resolving to loopback)."""
        return f"{self.scheme}://{host}:{self.port}{quote(path, safe='/?=&%')}"

    def last_request(self, path: str) -> RecordedRequest:
        """The latest request for ``path``."""
        return [r for r in self.requests if r.path == path][-1]

    # Routes ---------------------------------------------------------------------------------------------------

    def add_route(self, path: str, route: Callable[..., None]) -> str:
        """Register ``route`` for ``path``; reset its counter; return its URL."""
        with self._lock:
            self.routes[path] = route
            self.hits[path] = 0
        return self.url(path)

    def data_route(self, name: str) -> Callable[..., None] | None:
        """Serve ``data_dir/<name>`` (no ``..``), typed by its extension."""
        path = (self.data_dir / name).resolve()
        if self.data_dir.resolve() not in path.parents or not path.is_file():
            return None
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return status_route(200, path.read_bytes(), {"Content-Type": content_type})

    def add(
        self,
        path: str,
        body: bytes,
        *,
        status: int = 200,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        gzip_encode: bool = False,
    ) -> str:
        """Answer ``path`` with ``body`` (optionally sent with ``Content-Encoding: gzip``)."""
        all_headers = dict(headers or {})
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        if gzip_encode:
            body = gzip.compress(body)
            all_headers["Content-Encoding"] = "gzip"
        return self.add_route(path, status_route(status, body, all_headers))

    def add_redirect(self, path: str, location: str, status: int = 302) -> str:
        """Redirect ``path`` to ``location`` (absolute or relative)."""
        return self.add_route(path, status_route(status, b"", {"Location": location}))

    def add_flaky(
        self,
        path: str,
        body: bytes,
        *,
        failures: int = 1,
        status: int = 500,
        content_type: str = "application/zip",
        retry_after: str | None = None,
    ) -> str:
        """Answer ``status`` to the first ``failures`` requests, then ``body``."""
        failing = status_route(status, b"try again\n", {"Retry-After": retry_after} if retry_after else None)
        ok = status_route(200, body, {"Content-Type": content_type})

        def route(handler: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
            (failing if self.hits[path] <= failures else ok)(handler, query)

        return self.add_route(path, route)

    def add_slow(self, path: str, body: bytes, *, delay: float, chunk: int = 1) -> str:
        """Drip ``body`` ``chunk`` bytes at a time, ``delay`` seconds apart (until the server stops)."""

        def route(handler: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
            handler.send_response(200)
            handler.send_header("Content-Type", "text/csv")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            try:
                for start in range(0, len(body), chunk):
                    if self.stop.wait(delay):
                        return
                    handler.wfile.write(body[start : start + chunk])
                    handler.wfile.flush()
            except OSError:
                return  # the client gave up

        return self.add_route(path, route)

    def add_hanging(self, path: str) -> str:
        """Accept the request and never answer (until the server stops)."""

        def route(handler: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
            self.stop.wait(60)
            handler.close_connection = True

        return self.add_route(path, route)

    def add_truncated(
        self, path: str, body: bytes, *, claimed: int, content_type: str = "application/zip"
    ) -> str:
        """Announce ``claimed`` bytes, send ``body`` and close the connection."""

        def route(handler: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
            send(handler, body, headers={"Content-Type": content_type}, content_length=claimed)
            handler.close_connection = True

        return self.add_route(path, route)


class LoopbackFTPServer:
    """A pyftpdlib server on ``127.0.0.1`` with anonymous read-only access and one user account.

    :param anonymous_dir: home folder of anonymous users
    :param user_dir: home folder of ``openaddr``/``s3cret``
    """

    def __init__(self, anonymous_dir: Path, user_dir: Path) -> None:
        with (
            warnings.catch_warnings()
        ):  # pyftpdlib imports asyncore and asynchat, deprecated since Python 3.6
            warnings.simplefilter("ignore", DeprecationWarning)
            from pyftpdlib.authorizers import DummyAuthorizer
            from pyftpdlib.handlers import FTPHandler
            from pyftpdlib.servers import FTPServer

        logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
        authorizer = DummyAuthorizer()
        authorizer.add_anonymous(str(anonymous_dir))
        authorizer.add_user(FTP_USER, FTP_PASSWORD, str(user_dir), perm="elr")
        handler = type(
            "LoopbackFTPHandler",
            (FTPHandler,),
            {"authorizer": authorizer, "timeout": 30, "auth_failed_timeout": 0.01},
        )
        self.anonymous_dir = anonymous_dir
        self.user_dir = user_dir
        self.server = FTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.socket.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.server.serve_forever(timeout=0.02, blocking=False, handle_exit=False)
        self.server.close_all()

    def close(self) -> None:
        """Stop serving and close every connection."""
        self._stop.set()
        self._thread.join(5)

    def url(self, path: str, *, user: str | None = None, password: str | None = None) -> str:
        """The URL of ``path`` (percent-encoded), with credentials when given."""
        credentials = ""
        if user is not None:
            credentials = (
                quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "") + "@"
            )
        return f"ftp://{credentials}127.0.0.1:{self.port}{quote(path)}"


def self_signed_context(folder: Path) -> ssl.SSLContext:
    """A TLS server context with a new self-signed certificate for ``localhost`` and ``127.0.0.1``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


#: Files of ``fixtures/machine/data`` copied into the FTP server's anonymous folder.
FTP_FILES = ("us-or-portland.zip", "nl.zip", "us-pa-bucks.geojson")


@pytest.fixture(scope="session")
def http_server(fixtures: Path) -> Iterator[LoopbackHTTPServer]:
    """A loopback HTTP server serving ``fixtures/machine/data`` under ``/data/``."""
    server = LoopbackHTTPServer(fixtures / "data")
    yield server
    server.close()


@pytest.fixture(scope="session")
def https_server(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackHTTPServer]:
    """The same over TLS with a self-signed certificate."""
    server = LoopbackHTTPServer(
        fixtures / "data", ssl_context=self_signed_context(tmp_path_factory.mktemp("tls"))
    )
    yield server
    server.close()


@pytest.fixture(scope="session")
def ftp_server(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackFTPServer]:
    """A loopback FTP server.

    Anonymous folder: copies of :data:`FTP_FILES`, ``Address Points/E911 Addresses.zip`` (a copy of
    ``us-or-portland.zip``: a path with spaces, as ``corpus/sources/us/in/hamilton.json`` has) and ``empty.csv``
    (0 bytes). Folder of ``openaddr``/``s3cret``: ``private/nl.zip``.
    """
    anonymous = tmp_path_factory.mktemp("ftp-anonymous")
    user = tmp_path_factory.mktemp("ftp-user")
    for name in FTP_FILES:
        shutil.copyfile(fixtures / "data" / name, anonymous / name)
    (anonymous / "Address Points").mkdir()
    shutil.copyfile(
        fixtures / "data" / "us-or-portland.zip", anonymous / "Address Points" / "E911 Addresses.zip"
    )
    (anonymous / "empty.csv").write_bytes(b"")
    (user / "private").mkdir()
    shutil.copyfile(fixtures / "data" / "nl.zip", user / "private" / "nl.zip")
    server = LoopbackFTPServer(anonymous, user)
    yield server
    server.close()


@pytest.fixture
def allow_private_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lift the private-address guard through the environment, as tests of loopback servers must."""
    monkeypatch.setenv("OPENADDR_ALLOW_PRIVATE_URLS", "1")


@pytest.fixture
def download_settings(allow_private_urls: None) -> Settings:
    """Settings for loopback servers: guard lifted, timeouts of a second or less, retries after 10 ms."""
    return fast_settings(Settings.from_env())


def fast_settings(base: Settings | None = None, **changes: Any) -> Settings:
    """``base`` (default: guard lifted) with short timeouts and tiny retry delays, then ``changes``."""

    values: dict[str, Any] = {
        "connect_timeout": 2.0,
        "read_timeout": 0.5,
        "ftp_timeout": 2.0,
        "retry_delays": (0.01, 0.01),
        "max_retry_after": 0.05,
    }
    values.update(changes)
    return (base or Settings(allow_private_hosts=True)).replace(**values)


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
