"""The README's configuration table is generated from the code; they must not drift apart."""
from __future__ import annotations

import pathlib

from driftwise_slack.config import OPTIONS, markdown_table

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_config_table_matches_code() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- config-table:start -->") + len("<!-- config-table:start -->")
    end = text.index("<!-- config-table:end -->")
    assert text[start:end].strip() == markdown_table()


def test_readme_names_both_commands_and_every_option() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
    for option in OPTIONS:
        assert f"`{option.name}`" in text
