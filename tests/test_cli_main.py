"""The installed ``jevons`` command: a bad flag or value is one line on stderr and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

JEVONS = str(Path(sys.executable).with_name("jevons"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["cost", "gpt-4o", "--input", "abc"], "error: jevons cost: Invalid value for '--input'"),
        (["cost", "gpt-4o", "--bogus", "1"], "error: jevons cost: No such option: --bogus"),
        (["no-such-command"], "error: jevons: No such command 'no-such-command'."),
    ],
)
def test_usage_errors_are_one_line(args: list[str], expected: str) -> None:
    proc = subprocess.run([JEVONS, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()]  # exactly one line
    assert proc.stderr.startswith(expected)
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_no_arguments_shows_help_and_succeeds() -> None:
    proc = subprocess.run([JEVONS], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "Usage: jevons" in proc.stdout and proc.stderr == ""
