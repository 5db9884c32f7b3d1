"""The README's table of settings and :class:`openaddr.settings.Settings` agree, both ways."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from openaddr.settings import PRIVATE_HOSTS_VARIABLES, Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_rows() -> dict[str, tuple[str, ...]]:
    """``variable -> (every name of the row, default cell)`` from the table under "### Settings"."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Settings\n") :]
    section = section[: section.index("\n## ")]
    rows: dict[str, tuple[str, ...]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`OPENADDR_"):
            continue
        names = tuple(re.findall(r"`(OPENADDR_\w+)`", cells[0]))
        rows[names[0]] = (*names, cells[1])
    return rows


ROWS = readme_rows()


def field_of(variable: str) -> str:
    return next(field for field in Settings.model_fields if Settings.variable(field) == variable)


def test_the_table_lists_every_field_and_nothing_else() -> None:
    assert sorted(ROWS) == sorted(Settings.variable(field) for field in Settings.model_fields)
    assert ROWS[PRIVATE_HOSTS_VARIABLES[0]][:2] == PRIVATE_HOSTS_VARIABLES


@pytest.mark.parametrize("variable", sorted(ROWS))
def test_the_default_in_the_table_is_the_fields(variable: str) -> None:
    field = field_of(variable)
    default: Any = Settings.model_fields[field].default
    cell = ROWS[variable][-1]
    written = re.match(r"`([^`]*)`", cell)
    if written is None:
        assert cell.startswith("unset"), cell
        assert default in (None, ()), f"{variable}: the table says unset, the field's default is {default!r}"
    else:
        assert getattr(Settings.from_env({variable: written.group(1)}), field) == default


def _variables(lines: str, quote: str) -> set[str]:
    rows = "\n".join(line for line in lines.splitlines() if line.startswith(f"| {quote}"))
    return set(re.findall(rf"{quote}(OA_WEBHOOK_\w+|OPENADDR_\w+|GITHUB_WEBHOOK_SECRETS){quote}", rows))


def test_the_webhook_table_names_every_setting_of_the_app() -> None:
    """README's table under "The webhook" and ``webhook/__init__.py``'s table of settings name the same variables."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The webhook (`webhook/`)") :]
    section = section[: section.index("\nAny other Flask setting")]
    docstring = (README.parent / "webhook" / "__init__.py").read_text(encoding="utf-8").split('"""')[1]
    in_readme, in_app = _variables(section, "`"), _variables(docstring, "``")
    assert "OA_WEBHOOK_GITHUB_OAUTH_URL" in in_app
    assert sorted(in_readme) == sorted(in_app)
