"""Zope DSNs: ``dbi://user:password@host:port/dbname;key=value;...``.

:func:`parse_dsn` turns one into libpq connection keywords, which
``conninfo()`` writes as a libpq connection string and ``redacted_dsn()``
back as a DSN fit to show, without its passwords.  The host part may list
several hosts, each with its own port (``h1:5432,h2:5433``), and IPv6
addresses in brackets (``[::1]:5432``).  Standard library only.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote_plus, unquote_plus

__all__ = ["LIBPQ_KEYWORDS", "conninfo", "parse_dsn", "redacted_dsn"]

#: The connection parameters of libpq 18, the only keywords a DSN may set.
LIBPQ_KEYWORDS = frozenset(
    """host hostaddr port dbname user password passfile require_auth
    channel_binding connect_timeout client_encoding options application_name
    fallback_application_name keepalives keepalives_idle keepalives_interval
    keepalives_count tcp_user_timeout replication gssencmode sslmode
    sslnegotiation requiressl sslcompression sslcert sslkey sslkeylogfile
    sslpassword sslcertmode sslrootcert sslcrl sslcrldir sslsni requirepeer
    ssl_min_protocol_version ssl_max_protocol_version min_protocol_version
    max_protocol_version krbsrvname gsslib gssdelegation service
    target_session_attrs load_balance_hosts scram_client_key scram_server_key
    oauth_issuer oauth_client_id oauth_client_secret oauth_scope""".split()
)

_KEYWORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET = re.compile("password|secret|scram_")  # values never shown
_ENCODE_SEMICOLON = "; write a ';' inside a value (a password) as %3B"


def parse_dsn(dsn: str) -> dict[str, str]:
    """Turn a Zope DSN into libpq connection keywords.

    The DSN reads ``dbi://user:password@host:port/dbname;key=value;...``.
    Every part is optional and percent-encoded (``+`` stands for a space, as
    in ``zope.rdb``).  Without ``@`` the part before ``/`` is the user and
    password, not the host, unless it is an IPv6 address in brackets.  The
    host part may be a comma-separated list of ``host:port``; the keys after
    ``;`` are libpq's (:data:`LIBPQ_KEYWORDS`).  Only the parts present are
    returned.

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
            "unexpected ':' or '@' in the database name: percent-encode it"
            + _ENCODE_SEMICOLON
        )
    userinfo, at, hostport = location.rpartition("@")
    if not at:  # dbi://user:password/dbname, or dbi://[::1]/dbname
        userinfo, hostport = ("", location) if location[:1] == "[" else (location, "")
    user, _, password = userinfo.partition(":")
    host, port = _hosts_and_ports(hostport)
    parts = {"user": user, "password": password, "host": host, "port": port}
    parts["dbname"] = dbname
    parameters = {key: unquote_plus(value) for key, value in parts.items() if value}
    after_secret = False
    for number, item in enumerate(raw_parameters.split(";"), start=1):
        if not item:
            continue  # a trailing or doubled ';'
        key, equals, value = item.partition("=")
        key = unquote_plus(key)
        hint = _ENCODE_SEMICOLON if after_secret else ""
        if not equals or not _KEYWORD.fullmatch(key):
            raise ValueError(f"parameter {number} after ';' is not keyword=value{hint}")
        if key not in LIBPQ_KEYWORDS:
            # Not quoted: it may be the tail of a password cut at a ';'.
            message = f"parameter {number} after ';' is not a libpq connection"
            raise ValueError(f"{message} parameter{hint}")
        if key in parameters:
            raise ValueError(f"{key!r} is given twice{hint}")
        parameters[key] = unquote_plus(value)
        after_secret = bool(_SECRET.search(key))
    _check_ports(parameters)
    return parameters


def _hosts_and_ports(hostport: str) -> tuple[str, str]:
    """Split ``h1:5432,[::1]:5433`` into libpq's lists ``h1,::1`` and
    ``5432,5433`` (still percent-encoded)."""
    if not hostport:
        return "", ""
    hosts, ports = [], []
    for entry in hostport.split(","):
        if entry.startswith("["):  # an IPv6 address: [::1]:5432
            address, bracket, port = entry[1:].partition("]")
            if not bracket or port[:1] not in ("", ":") or not _is_ipv6(address):
                raise ValueError("write an IPv6 host as [address] or [address]:port")
            host, port = address, port[1:]
        else:
            host, _, port = entry.partition(":")
            if "[" in host or "]" in host or ":" in port:
                raise ValueError("write an IPv6 host as [address] or [address]:port")
        hosts.append(host)
        ports.append(port)
    return ",".join(hosts), ",".join(ports) if any(ports) else ""


def _is_ipv6(address: str) -> bool:
    try:
        return ipaddress.ip_address(unquote_plus(address)).version == 6
    except ValueError:
        return False


def _check_ports(parameters: dict[str, str]) -> None:
    ports = parameters.get("port", "").split(",")
    # Not quoted: with an unencoded '@' in a password, a port may be part of it.
    for port in ports:
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError("the port must be a number from 1 to 65535")
    hosts = len(parameters.get("host", "").split(","))
    if len(ports) not in (1, hosts):
        raise ValueError(f"{len(ports)} ports for {hosts} hosts: give one, or one each")


def redacted_dsn(parameters: dict[str, str]) -> str:
    """Write ``parameters`` back as a DSN, every secret shown as ``***``."""
    shown = {
        key: "***" if _SECRET.search(key) else quote_plus(value)
        for key, value in parameters.items()
    }
    location = shown.pop("user", "")
    if "password" in shown:
        location += ":" + shown.pop("password")
    if "host" in parameters:
        hosts = parameters["host"].split(",")
        ports = parameters.get("port", "").split(",")
        if len(ports) != len(hosts):
            ports = [""] * len(hosts)  # one port for all: stays a parameter
        else:
            shown.pop("port", None)
        del shown["host"]
        location += "@" + ",".join(
            (f"[{host}]" if ":" in host else quote_plus(host))
            + (f":{port}" if port else "")
            for host, port in zip(hosts, ports, strict=True)
        )
    dsn = "dbi://" + (location + "/" if location else "") + shown.pop("dbname", "")
    return dsn + "".join(f";{key}={value}" for key, value in shown.items())


def conninfo(parameters: dict[str, str]) -> str:
    """Write ``parameters`` as a libpq connection string."""
    # Quote every value, escaping backslashes and quotes, as libpq reads them.
    return " ".join(
        "{}='{}'".format(key, value.replace("\\", "\\\\").replace("'", "\\'"))
        for key, value in parameters.items()
    )
