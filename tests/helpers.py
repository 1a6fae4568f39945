"""Helpers that several test modules share: ``from helpers import run_python``.

Importable as ``helpers`` because ``tests/`` has no ``__init__.py``: pytest
puts the folder of each such test module on ``sys.path`` before importing it
(its default "prepend" import mode).  Fixtures go in ``conftest.py`` instead.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import reconnecting

#: The checkout (or site-packages folder) holding the package under test.
ROOT = Path(reconnecting.__file__).resolve().parents[1]


def sessions_named(direct, application_name):
    """How many server sessions go by ``application_name`` (``direct``: a
    cursor on a connection of its own)."""
    direct.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
        (application_name,),
    )
    return direct.fetchone()[0]


def child_env(**extra):
    """The environment for a child Python that imports this package, plus *extra*."""
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), **extra}


def run_python(code, **env):
    """Run *code* (dedented) in a fresh interpreter, whose modules and logging
    are untouched by the test session; *env* is added to its environment.

    Returns the finished ``subprocess.CompletedProcess``, output as text.
    """
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=child_env(**env),
        capture_output=True,
        text=True,
    )


def python_output(code, **env):
    """What :func:`run_python` printed, stripped; fails the test if it failed."""
    result = run_python(code, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def alive(pid):
    """True while *pid* runs (a zombie nobody reaped yet does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    # The state letter follows the command name, which is in parentheses.
    return not stat[stat.rfind(b")") + 2 :].startswith(b"Z")


def firewall_rules(port):
    """The iptables INPUT rules that mention *port*, as ``iptables -S`` lists them."""
    listed = subprocess.run(
        ["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True, check=True
    )
    return [line for line in listed.stdout.splitlines() if f" {port} " in line]
