"""Exit codes of every command, run as a subprocess (issue 10.4).

0 success, 1 a recorded failure (``index.json`` with a named source problem) or an invalid source file, 2 bad usage:
a missing or unreadable file, a FIFO or device given as a file, ``--out`` that is not a folder. No Python traceback
ever reaches the terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from openaddr.cli import main

if TYPE_CHECKING:
    from pathlib import Path

#: A v1 (advisory) source whose conform reads a local CSV, and its data.
CSV_HEADER = "x,y,SITENUMBER,SITESTREET,SITEZIP,SITECITY\n"
CSV_ROW = "-118.2,33.8,12,Main St,90745,Carson\n"


def run_cli(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m openaddr ARGS``; a command that hangs fails the test through ``TimeoutExpired``."""
    return subprocess.run(
        [sys.executable, "-m", "openaddr", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def no_traceback(result: subprocess.CompletedProcess[str]) -> bool:
    return "Traceback" not in result.stderr and "Traceback" not in result.stdout


def read_state(state_dir: Path) -> dict[str, Any]:
    keys, values = json.loads((state_dir / "index.json").read_text(encoding="utf-8"))
    return dict(zip(keys, values, strict=True))


@pytest.fixture
def carson(fixtures: Path, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """``us-ca-carson.json`` (layerless v1) made an HTTP CSV source, and a one-row CSV to conform."""
    document: dict[str, Any] = json.loads(
        (fixtures / "sources" / "us-ca-carson.json").read_text(encoding="utf-8")
    )
    document.update(protocol="http", data="http://127.0.0.1:9/carson.csv")
    data = tmp_path / "carson.csv"
    data.write_text(CSV_HEADER + CSV_ROW, encoding="utf-8")
    return document, data


def write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    path = tmp_path / "fifo.json"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("command", ["validate", "test-source"])
def test_missing_file_exits_2(command: str, tmp_path: Path) -> None:
    result = run_cli(command, tmp_path / "missing.json")
    assert result.returncode == 2
    assert "missing.json: cannot read source file: No such file or directory" in result.stdout + result.stderr
    assert no_traceback(result)


@pytest.mark.parametrize("command", ["validate", "test-source"])
def test_fifo_source_exits_2_without_hanging(command: str, fifo: Path) -> None:
    result = run_cli(command, fifo, timeout=30)
    assert result.returncode == 2
    assert f"{fifo}: cannot read source file: not a regular file" in result.stdout + result.stderr
    assert no_traceback(result)


def test_fifo_source_of_process_one_exits_2(fifo: Path, tmp_path: Path) -> None:
    result = run_cli("process-one", fifo, "--out", tmp_path / "out", timeout=30)
    assert result.returncode == 2
    assert result.stderr == f"openaddr process-one: {fifo}: cannot read source file: not a regular file\n"
    assert not (tmp_path / "out").exists()


def test_fifo_input_of_conform_exits_2(
    carson: tuple[dict[str, Any], Path], fifo: Path, tmp_path: Path
) -> None:
    source = write(tmp_path / "carson.json", carson[0])
    result = run_cli("conform", source, fifo, "--layer", "addresses", "--out", tmp_path / "out", timeout=30)
    assert result.returncode == 2
    assert result.stderr.endswith(f"openaddr conform: {fifo} is not a regular file or a folder\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["conform", "process-one"])
def test_missing_source_exits_2(command: str, carson: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    extra = [carson[1], "--layer", "addresses"] if command == "conform" else []
    result = run_cli(command, tmp_path / "missing.json", *extra, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "missing.json: cannot read source file: No such file or directory" in result.stderr
    assert no_traceback(result)


def test_missing_input_of_conform_exits_2(carson: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    source = write(tmp_path / "carson.json", carson[0])
    result = run_cli(
        "conform", source, tmp_path / "gone.csv", "--layer", "addresses", "--out", tmp_path / "out"
    )
    assert result.returncode == 2
    assert result.stderr.endswith(f"openaddr conform: {tmp_path / 'gone.csv'}: No such file or directory\n")


@pytest.mark.parametrize("command", ["conform", "process-one"])
def test_out_that_is_a_file_exits_2(
    command: str, carson: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    source = write(tmp_path / "carson.json", carson[0])
    out = tmp_path / "out"
    out.write_text("keep me\n", encoding="utf-8")
    extra = [carson[1], "--layer", "addresses"] if command == "conform" else []
    result = run_cli(command, source, *extra, "--out", out)
    assert result.returncode == 2
    assert result.stderr.endswith(f"openaddr {command}: --out {out} exists and is not a folder\n")
    assert out.read_text(encoding="utf-8") == "keep me\n"


def test_conform_success_and_recorded_failure(carson: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    document, data = carson
    document["coverage"]["US Census"] = {"geoid": "0611530", "name": "Carson", "state": "California"}
    ok = run_cli(
        "conform",
        write(tmp_path / "ok.json", document),
        data,
        "--layer",
        "addresses",
        "--out",
        tmp_path / "ok",
    )
    assert ok.returncode == 0, ok.stderr
    assert read_state(tmp_path / "ok")["source problem"] is None

    data.write_text(CSV_HEADER, encoding="utf-8")  # no rows
    empty = run_cli(
        "conform", tmp_path / "ok.json", data, "--layer", "addresses", "--out", tmp_path / "empty"
    )
    assert empty.returncode == 1
    assert read_state(tmp_path / "empty")["source problem"] == "Found no addresses in source data"


def test_unexpected_error_goes_to_output_txt_not_the_terminal(
    carson: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    # A v1 file is validated in advisory mode: this function object is only a warning, and the conform then fails
    # with a TypeError nobody raised on purpose.
    document, data = carson
    document["conform"]["street"] = {"function": ["join"], "fields": ["SITESTREET"]}
    source = write(tmp_path / "odd.json", document)
    out = tmp_path / "out"
    result = run_cli("conform", source, data, "--layer", "addresses", "--out", out)
    assert result.returncode == 1
    assert no_traceback(result)
    assert "Error doing conform; skipping: odd addresses/primary: unexpected TypeError: " in result.stderr
    assert read_state(out)["source problem"] == "Could not conform source data"
    log = (out / "output.txt").read_text(encoding="utf-8")
    assert "Traceback (most recent call last):" in log
    assert "TypeError" in log


def test_error_escaping_an_entry_is_recorded(
    carson: tuple[dict[str, Any], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An error outside run_entry's own handling (here: writing the state fails) still ends as a recorded failure.
    import openaddr.process_one

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("state disk gone")

    monkeypatch.setattr(openaddr.process_one, "run_entry", broken)
    source = write(tmp_path / "carson.json", carson[0])
    out = tmp_path / "out"
    assert main(["process-one", str(source), "--out", str(out)]) == 1
    state = read_state(out / "addresses" / "primary")
    assert state["source problem"] == "Could not conform source data"
    assert state["source"] == "carson.json"
    log = (out / "addresses" / "primary" / "output.txt").read_text(encoding="utf-8")
    assert "Traceback (most recent call last):" in log
    assert "RuntimeError: state disk gone" in log


@pytest.mark.parametrize("command", ["validate", "test-source"])
def test_unexpected_error_is_one_line(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    carson: tuple[dict[str, Any], Path],
) -> None:
    import openaddr.sources

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError("no room\nat all")

    monkeypatch.setattr(openaddr.sources, "upgrade_document", broken)
    source = write(tmp_path / "carson.json", carson[0])
    assert main([command, str(source)]) == 1
    assert capsys.readouterr().err == f"openaddr {command}: unexpected error: MemoryError: no room at all\n"


def test_unexpected_error_names_the_error_it_came_from(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    carson: tuple[dict[str, Any], Path],
) -> None:
    # numpy wraps a shared library that cannot be mapped (no address space left) in a page of advice.
    import openaddr.sources

    def broken(*args: Any, **kwargs: Any) -> Any:
        try:
            raise ImportError("libopenblas.so: failed to map segment from shared object")
        except ImportError as exc:
            raise ImportError("IMPORTANT: PLEASE READ THIS FOR ADVICE" + " ..." * 200) from exc

    monkeypatch.setattr(openaddr.sources, "upgrade_document", broken)
    source = write(tmp_path / "carson.json", carson[0])
    assert main(["validate", str(source)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("openaddr validate: unexpected error: ImportError: IMPORTANT: PLEASE READ")
    assert err.endswith(" (from ImportError: libopenblas.so: failed to map segment from shared object)\n")


def test_text_the_terminal_cannot_encode_is_escaped(tmp_path: Path) -> None:
    # A bidi control and an accent in an expected value, printed to an ASCII terminal: escaped, not a traceback.
    test = {
        "description": "t",
        "acceptance-tests": [{"description": "c", "inputs": {"N": "1"}, "expected": {"number": "é\u202e"}}],
    }
    source = write(
        tmp_path / "bidi.json", {"coverage": {"country": "xx"}, "conform": {"number": "N"}, "test": test}
    )
    result = subprocess.run(
        [sys.executable, "-m", "openaddr", "test-source", str(source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    assert result.returncode == 1
    assert result.stderr == ""
    assert '`{"number": "\\xe9\\u202e"}`' in result.stdout
