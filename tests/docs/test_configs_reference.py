"""docs/configs.md is generated from the schema and the config files, and up to date."""

from __future__ import annotations

import pathlib

import pytest

from rankseg_jax.config import reference, schema

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configs.md"


@pytest.fixture(scope="module")
def page() -> str:
    return reference.render(ROOT / "configs")


def test_committed_page_equals_the_generated_one(page):
    assert PAGE.read_text() == page, (
        "docs/configs.md is out of date: python -m rankseg_jax.config.reference > "
        "docs/configs.md")


def test_every_option_is_listed_with_its_default_and_its_comment(page):
    options, _ = reference.schema_comments()
    flat = reference._flat(schema.base_config())
    assert set(options) == set(flat)
    rows = page.split("\n## Options\n")[1].splitlines()
    for name, value in flat.items():
        row = next(line for line in rows if line.startswith(f"| `{name}` |"))
        assert repr(value) in row.replace("\\|", "|")
        assert options[name], f"{name} has no comment in schema.py"
        assert options[name].split()[0] in row


def test_an_option_the_source_scan_misses_fails_loudly(monkeypatch):
    base = schema.base_config

    def with_extra():
        c = base()
        c.train.new_option = 1
        return c

    monkeypatch.setattr(schema, "base_config", with_extra)
    with pytest.raises(RuntimeError, match="train.new_option"):
        reference.schema_section()


def test_config_files_list_their_variant_flags_and_changed_options(page):
    demo = page.split("### `configs/demo.py`")[1].split("\n### ")[0]
    assert "`steps` (1500)" in demo and "`baseline` (False)" in demo
    assert "| `model.num_classes` | `48` | `150` |" in demo
    assert "| `model.rankseg.ml_encoder` | `'tran_enc'` | multi-label encoder" in page
    assert "One of: `tran_enc`, `tran_dec`, `gap_linear`." in page
