"""`altgrad formats` end to end."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from altgrad_cli.cli.app import app
from altgrad_cli.numerics.formats import registry

runner = CliRunner()


def test_formats_json_lists_the_registry():
    result = runner.invoke(app, ["formats", "--output", "json"])
    assert result.exit_code == 0
    listing = json.loads(result.stdout)
    rows = listing["formats"]
    assert [r["name"] for r in rows] == [f.name for f in registry()]
    e4m3fn = rows[0]
    assert e4m3fn["max"] == 448 and e4m3fn["aliases"][:2] == ["E4M3", "fp8"]
    assert next(r for r in rows if r["name"] == "E0M7")["bias"] is None
    recipes = {r["name"]: r for r in listing["recipes"]}
    assert recipes["mxfp8"]["recipe"] == "e4m3fn@block:32:floor"
    assert recipes["nvfp4"] == {
        "name": "nvfp4",
        "recipe": "e2m1fn@nvfp4",
        "format": "e2m1fn",
        "scaling": "nvfp4",
        "description": recipes["nvfp4"]["description"],
    }
    assert set(recipes) >= {"mxfp4", "fp8_blockwise", "fp8_rowwise", "fp8_tensorwise"}


def test_formats_table_names_every_format():
    result = runner.invoke(app, ["formats"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    for fmt in registry():
        assert fmt.name in result.stdout
    assert "57344" in result.stdout and "2^-9" in result.stdout
    assert "nvfp4" in result.stdout and "e4m3fn@block:128x128:fp32" in result.stdout


def test_bad_output_is_usage_error():
    result = runner.invoke(app, ["formats", "--output", "xml"])
    assert result.exit_code == 2
