"""Zope DSNs: ``dbi://user:password@host:port/dbname;key=value;...``.

:func:`parse_dsn` turns one into libpq connection keywords, which
``conninfo()`` writes as a libpq connection string and ``redacted_dsn()``
back as a DSN fit to show, without its passwords.
Standard library only.
"""

from __future__ import annotations

import re
from urllib.parse import quote_plus, unquote_plus

__all__ = ["conninfo", "parse_dsn", "redacted_dsn"]

_KEYWORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_dsn(dsn: str) -> dict[str, str]:
    """Turn a Zope DSN into libpq connection keywords.

    The DSN reads ``dbi://user:password@host:port/dbname;key=value;...``.
    Every part is optional and percent-encoded (``+`` stands for a space, as
    in ``zope.rdb``).  Without ``@`` the part before ``/`` is the user and
    password, not the host.  Only the parts present are returned.

    :raises ValueError: saying what is wrong, never quoting the password.
    :raises TypeError: if ``dsn`` is not a string.
    """
    if not isinstance(dsn, str):
        raise TypeError(f"a DSN is a str, not {type(dsn).__name__}")
    if not dsn.startswith("dbi://"):
        raise ValueError("a DSN must start with 'dbi://'")
    path, _, raw_parameters = dsn[len("dbi://") :].partition(";")
    # Split at the last '/' and '@': an unencoded '/' or '@' in a password
    # must not push the password into the database name or host.
    location, _, dbname = path.rpartition("/")
    if ":" in dbname or "@" in dbname:
        raise ValueError(
            "unexpected ':' or '@' in the database name: percent-encode it, "
            "and any ';' in the password"
        )
    userinfo, at, hostport = location.rpartition("@")
    if not at:
        userinfo, hostport = location, ""
    user, _, password = userinfo.partition(":")
    if hostport.startswith("["):  # an IPv6 address: [::1]:5432
        host, bracket, port = hostport[1:].partition("]")
        if not bracket or port[:1] not in ("", ":"):
            raise ValueError("write an IPv6 host as [address] or [address]:port")
        port = port[1:]
    else:
        host, _, port = hostport.partition(":")
    parts = {"user": user, "password": password, "host": host, "port": port}
    parts["dbname"] = dbname
    parameters = {key: unquote_plus(value) for key, value in parts.items() if value}
    for number, item in enumerate(raw_parameters.split(";"), start=1):
        if not item:
            continue  # a trailing or doubled ';'
        key, equals, value = item.partition("=")
        key = unquote_plus(key)
        if not equals or not _KEYWORD.fullmatch(key):
            raise ValueError(f"parameter {number} after ';' is not keyword=value")
        if key in parameters:
            raise ValueError(f"{key!r} is given twice")
        parameters[key] = unquote_plus(value)
    given_port = parameters.get("port")
    if given_port is not None and not (
        given_port.isascii() and given_port.isdigit() and 1 <= int(given_port) <= 65535
    ):
        # Not quoted: with an unencoded '@' in a password, this may be part of it.
        raise ValueError("the port must be a number from 1 to 65535")
    return parameters


def redacted_dsn(parameters: dict[str, str]) -> str:
    """Write ``parameters`` back as a DSN, every password shown as ``***``."""
    shown = {
        key: "***" if "password" in key else quote_plus(value)
        for key, value in parameters.items()
    }
    location = shown.pop("user", "")
    if "password" in shown:
        location += ":" + shown.pop("password")
    if "host" in shown or "port" in shown:
        location += "@" + shown.pop("host", "")
        if "port" in shown:
            location += ":" + shown.pop("port")
    dsn = "dbi://" + (location + "/" if location else "") + shown.pop("dbname", "")
    return dsn + "".join(f";{key}={value}" for key, value in shown.items())


def conninfo(parameters: dict[str, str]) -> str:
    """Write ``parameters`` as a libpq connection string."""
    # Quote every value, escaping backslashes and quotes, as libpq reads them.
    return " ".join(
        "{}='{}'".format(key, value.replace("\\", "\\\\").replace("'", "\\'"))
        for key, value in parameters.items()
    )
