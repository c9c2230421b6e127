"""Docs that are generated or quoted must match the code."""

from pathlib import Path

from lake.clidoc import render

ROOT = Path(__file__).parent.parent


def test_cli_reference_is_current() -> None:
    assert (ROOT / "docs" / "cli.md").read_text() == render(), (
        "regenerate: python -m lake.clidoc > docs/cli.md"
    )


def test_ci_runs_the_readme_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e . && lake demo" in readme
    test_cmd = "pip install -e '.[test]' && pytest"
    assert test_cmd in readme and f"\n{test_cmd}\n" in ci
