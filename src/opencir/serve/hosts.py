"""The ``Host`` header allow-list: the server's defence against DNS rebinding.

A web page on ``evil.example`` can point its own name at 127.0.0.1 and then read the answers
of a server bound to loopback as if they came from its own origin; the one thing it cannot
change is the ``Host`` header, which still says ``evil.example``. So the server answers only
the names it is known by: the bound host, ``localhost``, ``127.0.0.1`` and ``[::1]`` on the
port it listens on, plus the entries given with ``--allowed-host`` (``NAME`` on any port,
``NAME:PORT`` on that port, ``*`` for any host: only behind a proxy that checks it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from opencir.serve.errors import ApiError

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"
_PORT = re.compile(r"[0-9]{1,5}")


def parse_host(value: str) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``[v6]`` or ``[v6]:port`` → (lower-case name, port or None).

    A ValueError says what is wrong; callers name the input it came from.
    """
    text = value.strip().lower()
    if text.startswith("["):
        name, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("expected [IPv6] or [IPv6]:PORT")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise ValueError("write an IPv6 address in brackets, e.g. [fe80::1]:8000")
    else:
        name, colon, port_text = text.partition(":")
        port_text = port_text if colon else None
    if not name or any(c.isspace() or c in "/@[]" for c in name):
        raise ValueError("expected NAME or NAME:PORT")
    if port_text is None:
        return name, None
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise ValueError(f"the port must be a number from 1 to 65535, got {port_text!r}")
    return name, int(port_text)


@dataclass(frozen=True)
class AllowedHosts:
    """Which ``Host`` headers are answered; :meth:`refusal` says why one is not."""

    local: frozenset[str]  # answered on the listening port
    extra: tuple[tuple[str, int | None], ...] = ()  # (name, port or None for any port)
    any_host: bool = False

    @classmethod
    def build(cls, bound_host: str, entries: Iterable[str] = ()) -> AllowedHosts:
        """The defaults for ``bound_host`` plus ``entries`` (ValueError names a bad one)."""
        entries = [entry.strip() for entry in entries]
        local = frozenset({*LOCAL_NAMES, bound_host.strip().strip("[]").lower()})
        extra = tuple(_allowed_entry(entry) for entry in entries if entry != ANY_HOST)
        return cls(local, extra, ANY_HOST in entries)

    def allows(self, name: str, port: int | None, listening_port: int | None) -> bool:
        if self.any_host or (name, None) in self.extra or (name, port) in self.extra:
            return True
        return name in self.local and (port is None or listening_port in (None, port))

    def refusal(self, scope: dict[str, Any]) -> ApiError | None:
        """None if the request's ``Host`` is allowed, else the 400/421 error to answer."""
        if self.any_host:
            return None
        values = [value for name, value in scope.get("headers", ()) if name == b"host"]
        if len(values) != 1:
            return ApiError(400, "invalid_host", "the request needs exactly one Host header")
        header = values[0].decode("latin-1")
        try:
            name, port = parse_host(header)
        except ValueError as error:
            detail = f"the Host header {header!r} is malformed: {error}"
            return ApiError(400, "invalid_host", detail)
        listening_port = scope["server"][1] if scope.get("server") else None
        if self.allows(name, port, listening_port):
            return None
        answered = ", ".join(self.describe(listening_port))
        detail = (
            f"this server does not answer for Host {header!r}, only for {answered}; "
            f"to allow it, start the server with --allowed-host {_format(name, port)}"
        )
        return ApiError(421, "host_not_allowed", detail)

    def describe(self, listening_port: int | None) -> list[str]:
        """The allowed hosts, as a person would write them."""
        local = [_format(name, listening_port) for name in sorted(self.local)]
        return local + [_format(name, port) for name, port in self.extra]


def _allowed_entry(entry: str) -> tuple[str, int | None]:
    try:
        return parse_host(entry)
    except ValueError as error:
        raise ValueError(f"allowed host {entry!r} is malformed: {error}") from error


def _format(name: str, port: int | None) -> str:
    host = f"[{name}]" if ":" in name else name
    return f"{host}:{port}" if port else host
