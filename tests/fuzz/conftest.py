"""The fuzz suite's settings and its figures.

``make test`` runs a bounded, derandomised sample (``FUZZ_EXAMPLES`` cases in all, 264 by default); ``make fuzz``
sets ``FUZZ_EXAMPLES`` high and ``FUZZ_SEED`` to a random seed it prints. At the end of the session the figures
(cases, outcomes per exit status, worst memory and time) are printed, and written as JSON to ``FUZZ_FIGURES`` when
that is set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.fuzz.harness import RECORDED, figures, format_figures

if TYPE_CHECKING:
    from _pytest.terminal import TerminalReporter


@pytest.fixture(scope="session")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Parent of every case's sandbox; a failed case's sandbox stays here for a look."""
    return tmp_path_factory.mktemp("fuzz")


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if not RECORDED:
        return
    data = figures(list(RECORDED))
    seed = os.environ.get("FUZZ_SEED")
    data["seed"] = int(seed) if seed else "derandomized"
    terminalreporter.write_sep("-", "fuzz figures")
    terminalreporter.write_line(format_figures(data) + f"\n  seed: {data['seed']}")
    target = os.environ.get("FUZZ_FIGURES")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(data, indent=2) + "\n")
