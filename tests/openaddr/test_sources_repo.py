"""Listing the sources of a set (machine-ci.md §6): a local checkout, or one tarball from the fake GitHub."""

from __future__ import annotations

import shutil
import socket
import subprocess
from typing import TYPE_CHECKING

import pytest

from openaddr.errors import OpenaddrError
from openaddr.github import github_client
from openaddr.sources_repo import (
    SourceFile,
    SourceListing,
    SourcesLocationError,
    git_blob_sha,
    list_github_sources,
    list_local_sources,
    list_sources,
    parse_github_location,
    resolve_head_commit,
)
from tests.servers import send

if TYPE_CHECKING:
    from pathlib import Path

    import github

    from tests.github_server import FakeGitHub

#: Real files of the corpus: nested folders, a non-ASCII name, a file next to a folder of the same region.
REAL_SOURCES = (
    "sources/us/wy/park.json",
    "sources/us/ca/alameda.json",
    "sources/fi/etelä-savo-fi.json",
    "sources/uy/countrywide.json",
    "sources/uy/mo/montevideo.json",
)
SHA = "3f9a1c0e5b7d2f4a6c8e0b1d3f5a7c9e1b3d5f70"
OTHER_SHA = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
GIT = shutil.which("git")


class Sleeps(list):
    """A ``sleep`` that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def checkout(corpus_sources: Path, tmp_path: Path) -> Path:
    """A folder shaped like the openaddresses repository: a few real sources, plus files that are not sources."""
    root = tmp_path / "openaddresses"
    for name in REAL_SOURCES:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus_sources.parent / name, target)
    (root / "sources" / "README.md").write_text("not a source\n")
    (root / "sources" / "us" / "notes.json.txt").write_text("not a source either\n")
    (root / "package.json").write_text('{"name": "openaddresses"}\n')
    (root / "schema").mkdir()
    (root / "schema" / "source_schema.json").write_text("{}\n")
    return root


@pytest.fixture
def client(fake_github: FakeGitHub) -> github.Github:
    return github_client(
        "s3cret-token",
        fake_github.base_url,
        timeout=5,
        seconds_between_requests=None,
        seconds_between_writes=None,
    )


def hash_object(path: Path) -> str:
    assert GIT is not None
    return subprocess.run(
        [GIT, "hash-object", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_git_blob_sha() -> None:
    assert git_blob_sha(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_blob_sha(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


# Local checkouts --------------------------------------------------------------------------------------------


def test_list_local_sources(checkout: Path) -> None:
    listing = list_local_sources(checkout)
    assert (listing.owner, listing.repository, listing.commit_sha) == ("openaddresses", "openaddresses", None)
    assert [source.path for source in listing.files] == sorted(REAL_SOURCES)
    for source in listing.files:
        content = (checkout / source.path).read_bytes()
        assert source.content == content
        assert source.blob_sha == git_blob_sha(content)


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_blob_shas_match_git(checkout: Path) -> None:
    for source in list_local_sources(checkout).files:
        assert source.blob_sha == hash_object(checkout / source.path), source.path


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_commit_of_a_git_work_tree(checkout: Path) -> None:
    def git(*args: str) -> str:
        command = [
            GIT,
            "-C",
            str(checkout),
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            *args,
        ]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "sources")
    listing = list_local_sources(checkout, owner="someone", repository="fork")
    assert listing.commit_sha == git("rev-parse", "HEAD")
    assert (listing.owner, listing.repository) == ("someone", "fork")
    assert {source.blob_sha for source in listing.files} <= set(git("ls-files", "-s").split())
    # A folder inside the work tree is not described by its HEAD.
    assert list_local_sources(checkout / "sources").commit_sha is None


def test_no_git_installed(checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    listing = list_local_sources(checkout)
    assert listing.commit_sha is None
    assert len(listing.files) == len(REAL_SOURCES)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SourcesLocationError, match="does not exist"):
        list_local_sources(tmp_path / "nowhere")
    assert list_local_sources(tmp_path).files == []


def test_list_sources_of_a_folder(checkout: Path) -> None:
    assert list_sources(str(checkout)) == list_local_sources(checkout)


# GitHub -----------------------------------------------------------------------------------------------------


def test_list_github_sources_from_one_tarball(
    fake_github: FakeGitHub, client: github.Github, checkout: Path
) -> None:
    fake_github.add_repository("openaddresses", "openaddresses", checkout, SHA)
    sleeps = Sleeps()
    listing = list_github_sources(client, "openaddresses", "openaddresses", sleep=sleeps)
    local = list_local_sources(checkout)
    assert listing == SourceListing("openaddresses", "openaddresses", SHA, local.files)
    assert sleeps == []
    paths = [request.path for request in fake_github.requests]
    assert paths == [
        "/repos/openaddresses/openaddresses",
        "/repos/openaddresses/openaddresses/commits/master",
        f"/repos/openaddresses/openaddresses/tarball/{SHA}",
        f"/_codeload/openaddresses/openaddresses/legacy.tar.gz/{SHA}",
    ]
    assert all(request.headers["Authorization"] == "token s3cret-token" for request in fake_github.requests)


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_github_blob_shas_match_git(fake_github: FakeGitHub, client: github.Github, checkout: Path) -> None:
    fake_github.add_repository("openaddresses", "openaddresses", checkout, SHA)
    for source in list_github_sources(client, "openaddresses", "openaddresses").files:
        assert source.blob_sha == hash_object(checkout / source.path), source.path


def test_ref_other_than_the_default_branch(
    fake_github: FakeGitHub, client: github.Github, checkout: Path, tmp_path: Path
) -> None:
    repository = fake_github.add_repository(
        "openaddresses", "openaddresses", checkout, SHA, default_branch="main"
    )
    other = tmp_path / "other"
    shutil.copytree(checkout, other)
    (other / "sources" / "us" / "wy" / "park.json").unlink()
    (other / "sources" / "us" / "wy" / "new.json").write_bytes(b'{"schema": 2}\n')
    repository.add_commit(OTHER_SHA, other, branch="feature/new")

    listing = list_github_sources(client, "openaddresses", "openaddresses", "feature/new")
    assert listing.commit_sha == OTHER_SHA
    paths = [source.path for source in listing.files]
    assert "sources/us/wy/new.json" in paths
    assert "sources/us/wy/park.json" not in paths
    assert list_github_sources(client, "openaddresses", "openaddresses", OTHER_SHA[:7]).files == listing.files
    assert list_github_sources(client, "openaddresses", "openaddresses").commit_sha == SHA
    assert resolve_head_commit(client, "openaddresses", "openaddresses") == SHA
    assert resolve_head_commit(client, "openaddresses", "openaddresses", "feature/new") == OTHER_SHA


@pytest.mark.parametrize(
    "path",
    [
        "/repos/openaddresses/openaddresses",
        "/repos/openaddresses/openaddresses/commits/master",
        f"/repos/openaddresses/openaddresses/tarball/{SHA}",
        f"/_codeload/openaddresses/openaddresses/legacy.tar.gz/{SHA}",
    ],
)
def test_server_error_is_retried(
    fake_github: FakeGitHub, client: github.Github, checkout: Path, path: str
) -> None:
    fake_github.add_repository("openaddresses", "openaddresses", checkout, SHA)
    fake_github.fail_next(path, times=1, status=503)
    sleeps = Sleeps()
    listing = list_github_sources(client, "openaddresses", "openaddresses", sleep=sleeps)
    assert sleeps == [5.0]
    assert fake_github.hits[path] == 2
    assert listing.commit_sha == SHA
    assert len(listing.files) == len(REAL_SOURCES)


def test_persistent_failure_names_the_repository(
    fake_github: FakeGitHub, client: github.Github, checkout: Path
) -> None:
    fake_github.add_repository("openaddresses", "openaddresses", checkout, SHA)
    path = f"/repos/openaddresses/openaddresses/tarball/{SHA}"
    fake_github.fail_next(path, times=10)
    sleeps = Sleeps()
    with pytest.raises(
        SourcesLocationError, match=r"openaddresses/openaddresses@master after 3 attempts"
    ) as error:
        list_github_sources(client, "openaddresses", "openaddresses", retry_delay=1.5, sleep=sleeps)
    assert "HTTP 500" in str(error.value)
    assert isinstance(error.value, OpenaddrError)
    assert sleeps == [1.5, 1.5]
    assert fake_github.hits[path] == 3


def test_unknown_repository_and_ref_are_not_retried(
    fake_github: FakeGitHub, client: github.Github, checkout: Path
) -> None:
    sleeps = Sleeps()
    with pytest.raises(SourcesLocationError, match=r"openaddresses/missing@<default branch>: HTTP 404"):
        list_github_sources(client, "openaddresses", "missing", sleep=sleeps)
    fake_github.add_repository("openaddresses", "openaddresses", checkout, SHA)
    with pytest.raises(SourcesLocationError, match=r"openaddresses/openaddresses@no-such-branch: HTTP 422"):
        list_github_sources(client, "openaddresses", "openaddresses", "no-such-branch", sleep=sleeps)
    assert sleeps == []


def test_github_down(checkout: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = github_client("t", f"http://127.0.0.1:{port}", seconds_between_requests=None)
    sleeps = Sleeps()
    with pytest.raises(SourcesLocationError, match="openaddresses/openaddresses@v1 after 2 attempts"):
        list_github_sources(client, "openaddresses", "openaddresses", "v1", attempts=2, sleep=sleeps)
    assert sleeps == [5.0]


def test_token_stays_on_the_api_host(fake_github: FakeGitHub, client: github.Github, checkout: Path) -> None:
    """github.com sends archives to codeload.github.com: the API token must not follow the redirect there."""
    fake_github.add_repository("openaddresses", "openaddresses", checkout, SHA)
    codeload = f"/_codeload/openaddresses/openaddresses/legacy.tar.gz/{SHA}"

    def elsewhere(server, handler, request, params) -> None:
        location = f"http://localhost:{server.port}{codeload}"
        send(handler, b"", status=302, headers={"Location": location})

    fake_github.add_route("GET", f"/repos/openaddresses/openaddresses/tarball/{SHA}", elsewhere)
    listing = list_github_sources(client, "openaddresses", "openaddresses")
    assert len(listing.files) == len(REAL_SOURCES)
    download = [request for request in fake_github.requests if request.path == codeload]
    assert len(download) == 1
    assert "Authorization" not in download[0].headers
    assert fake_github.requests[0].headers["Authorization"] == "token s3cret-token"


def test_broken_archive(fake_github: FakeGitHub, client: github.Github, checkout: Path) -> None:
    fake_github.add_repository("openaddresses", "openaddresses", checkout, SHA)
    path = f"/_codeload/openaddresses/openaddresses/legacy.tar.gz/{SHA}"

    def truncated(server, handler, request, params) -> None:
        body = server.repositories[("openaddresses", "openaddresses")].tarball(SHA)
        send(handler, body[: len(body) // 2], headers={"Content-Type": "application/x-gzip"})

    fake_github.add_route("GET", path, truncated)
    sleeps = Sleeps()
    with pytest.raises(
        SourcesLocationError, match="download the archive of openaddresses/openaddresses@master"
    ):
        list_github_sources(client, "openaddresses", "openaddresses", sleep=sleeps)
    assert sleeps == [5.0, 5.0]


def test_list_sources_of_github(fake_github: FakeGitHub, client: github.Github, checkout: Path) -> None:
    fake_github.add_repository("someone", "fork.of-oa", checkout, SHA)
    listing = list_sources("github:someone/fork.of-oa@master", client_factory=lambda: client)
    assert (listing.owner, listing.repository, listing.commit_sha) == ("someone", "fork.of-oa", SHA)
    assert [source.path for source in listing.files] == sorted(REAL_SOURCES)
    assert isinstance(listing.files[0], SourceFile)


def test_github_locations() -> None:
    assert parse_github_location("github:openaddresses/openaddresses") == (
        "openaddresses",
        "openaddresses",
        None,
    )
    assert parse_github_location("github:a/b@feature/x") == ("a", "b", "feature/x")
    for bad in ("github:openaddresses", "github:a/b/c", "github:/b", "github:a/b@", "github:a/../b", "a/b"):
        with pytest.raises(SourcesLocationError):
            parse_github_location(bad)
    with pytest.raises(SourcesLocationError, match="expected github:owner/repository"):
        list_sources("github:nope", client_factory=lambda: pytest.fail("no client needed"))
