"""The Host header, checked before anything builds a URL from it.

With PUBLIC_URL unset, `stream_url`, `Location` and `Link` are built from
the request's Host (RFC 9110 §7.2). A Host that is not a syntactically valid
`host[:port]` (a DNS name, an IPv4 address or a bracketed IPv6 address,
with an optional port) is refused with 400, so a client can never smuggle
link parameters or markup into those URLs (`Host: a.example>; rel="preload`).
In production set PUBLIC_URL: then no Host reaches a URL at all.
"""

import functools
import ipaddress
import re

from aiohttp import web

from web.problems import Problem

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]{{2,45}}\])(?::([0-9]{{1,5}}))?")


def valid_host(value: str) -> bool:
    return len(value) <= 261 and _valid_host(value)


# Clients send the same few Host values again and again: each is judged
# once (and only short ones are remembered, so the memory stays small).
@functools.lru_cache(maxsize=1024)
def _valid_host(value: str) -> bool:
    match = _HOST.fullmatch(value)
    if match is None or (match[1] is not None and int(match[1]) > 65535):
        return False
    if value.startswith("["):
        try:
            ipaddress.IPv6Address(value[1 : value.index("]")])
        except ValueError:
            return False
    return True


def check(request: web.Request) -> None:
    """Raise a 400 for a Host header that is not a valid host[:port]."""
    host = request.headers.get("Host")
    if host is not None and not valid_host(host):
        raise Problem(
            400,
            "The Host header is not a valid host[:port]",
            errors=[
                {"field": "Host", "reason": "not a host name or address, with an optional port"}
            ],
        )
