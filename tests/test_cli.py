"""The top-level command: version from package metadata, help lists the verbs."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

from click.testing import CliRunner

from lofi.cli import COMMANDS, main


def test_version_comes_from_metadata():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert version("lofi") in result.output


def test_help_lists_every_verb():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for verb in COMMANDS:
        assert verb in result.output


def test_python_dash_m_runs_the_same_cli():
    completed = subprocess.run(
        [sys.executable, "-m", "lofi", "--help"], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0
    assert "Usage" in completed.stdout
