"""The pytest plugin, used as another project uses it.

docs/testing.rst shows a user's test file; this writes it, as it stands on
the page, into a directory of its own (no conftest.py, no settings) and
runs pytest there in a new process, where only the ``pytest11`` entry point
of the installed package can provide the fixtures.
"""

import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).parent.parent / "docs" / "testing.rst"


def users_test_file():
    """The code block of the page that starts with ``# test_orders.py``."""
    blocks = re.findall(
        r"^\.\. code-block:: python\n\n((?:    .*\n|\n)+)", PAGE.read_text(), re.M
    )
    for block in blocks:
        if block.startswith("    # test_orders.py"):
            return "\n".join(line[4:] for line in block.splitlines()) + "\n"
    raise AssertionError(f"no test_orders.py block in {PAGE}")


def run_pytest(directory, *args):
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=directory,
        capture_output=True,
        text=True,
    )


def test_a_users_own_test_file(tmp_path):
    (tmp_path / "test_orders.py").write_text(users_test_file())
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b2 passed\b", result.stdout), result.stdout


def test_the_plugin_can_be_turned_off(tmp_path):
    (tmp_path / "test_orders.py").write_text(users_test_file())
    result = run_pytest(tmp_path, "-p", "no:reconnecting")
    assert result.returncode != 0
    assert "fixture 'pg_database' not found" in result.stdout
