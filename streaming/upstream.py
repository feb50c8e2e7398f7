"""Upstream audio origins: one shared client session, and the guard that keeps
it off internal addresses (SSRF).

The guard checks the address actually connected to: host names go through
`GuardedResolver`, which drops every resolved address that is not public
(unless UPSTREAM_ALLOW names it), so names that resolve inward and DNS
answers that change between check and use are both refused. IP literals,
which aiohttp connects to without resolving, are checked by `open_upstream`
on every redirect hop, including the legacy decimal, octal and hex IPv4
forms.

Trusted origins (`open(..., trusted=True)`: the media bucket, whose
endpoint the operator configured and which may well be on a private
network) bypass the guard, through a session of their own: connections are
pooled by host and port and the guard checks addresses only when it
connects, so a connection opened to a private endpoint for a trusted request
must never be reused by a clip's URL naming the same host.
"""

import asyncio
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import yarl
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from settings import SETTINGS, Settings, upstream_ssl_context
from streaming.addresses import is_public

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
REDIRECTS = frozenset({301, 302, 303, 307, 308})


log = logging.getLogger(__name__)


class UpstreamRefused(OSError):
    """The upstream URL or one of its addresses is not allowed. Its message
    reaches clients (a 400 to writers, a 502 to anyone holding a stream URL),
    so it never says what a name resolved to: that goes to the log."""


# What a client reads when a host is internal, however that was found out:
# an IP literal, `localhost`, or a DNS answer (which must stay private).
NOT_PUBLIC = "the URL's host is not a public address"


class UpstreamBusy(Exception):
    """Every one of UPSTREAM_MAX_CONNECTIONS origin connections is in use."""


class UpstreamGuard:
    def __init__(self, allow: tuple[str, ...]):
        networks, hosts = [], set()
        for entry in allow:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        self._networks = tuple(networks)
        self._hosts = frozenset(hosts)

    def allows_name(self, host: str) -> bool:
        return host.lower().rstrip(".") in self._hosts

    def allows_address(self, ip: IPAddress) -> bool:
        """Public by streaming/addresses.py's explicit policy (IPv6 forms
        that carry IPv4 judged by what they carry), or in UPSTREAM_ALLOW."""
        return is_public(ip, self._allows_network)

    def _allows_network(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self._networks)

    def check_url(self, url: yarl.URL) -> None:
        """Refuse what can be refused without DNS: scheme, credentials, and
        a host that is an IP literal in any spelling."""
        if url.scheme not in ("http", "https"):
            raise UpstreamRefused(f"only http and https URLs are allowed, not {url.scheme!r}")
        if url.user is not None or url.password is not None:
            raise UpstreamRefused("URLs with credentials are not allowed")
        host = url.raw_host
        if not host:
            raise UpstreamRefused("the URL has no host")
        if self.allows_name(host):
            return
        ip = literal_address(host)
        if ip is None and not is_dns_name(host):
            raise UpstreamRefused("the URL's host is not a valid name")
        if ip is None and is_localhost(host):
            ip = LOOPBACK  # RFC 6761: such names always mean this machine
        if ip is not None and not self.allows_address(ip):
            log.info("upstream refused: %s is %s, not a public address", host, ip)
            raise UpstreamRefused(NOT_PUBLIC)

    async def check_url_resolving(self, url: yarl.URL, resolver: AbstractResolver) -> None:
        """check_url, then refuse a host name that resolves only to refused
        addresses. A name that does not resolve right now is accepted: DNS
        can be briefly down, and every connection is checked again anyway."""
        self.check_url(url)
        host = url.raw_host
        if self.allows_name(host) or is_localhost(host) or literal_address(host) is not None:
            return
        try:
            await resolver.resolve(host, url.port or 0, socket.AF_UNSPEC)
        except UpstreamRefused:
            raise
        except OSError:
            pass  # unresolvable for now: the connection-time check decides


LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


def is_dns_name(host: str) -> bool:
    """Labels of 1 to 63 octets, 253 in all (RFC 1035), as IDNA encodes
    them: `a..b` or a 300-character label can be neither resolved nor
    connected to."""
    try:
        encoded = host.rstrip(".").encode("idna")
    except UnicodeError:
        return False
    return 0 < len(encoded) <= 253


def is_localhost(host: str) -> bool:
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def literal_address(host: str) -> IPAddress | None:
    """The address an IP-literal host names, legacy IPv4 forms included
    (`2130706433`, `0x7f.1`, `017700000001`, `127.1` are all 127.0.0.1)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


class GuardedResolver(AbstractResolver):
    def __init__(self, guard: UpstreamGuard, resolver: AbstractResolver | None = None):
        self._guard = guard
        self._resolver = resolver or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        if self._guard.allows_name(host):
            return results
        allowed = [r for r in results if self._guard.allows_address(literal_address(r["host"]))]
        if not allowed:
            addresses = ", ".join(sorted({r["host"] for r in results}))
            log.info("upstream refused: %s resolves to %s, not public", host, addresses)
            raise UpstreamRefused(NOT_PUBLIC)
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


class Upstream:
    """The app's shared client session with its guard and timeouts."""

    def __init__(self, settings: Settings):
        self.guard = UpstreamGuard(settings.upstream_allow)
        self.resolver = GuardedResolver(self.guard)
        self.headers_timeout = settings.upstream_headers_timeout
        self.buffer_bytes = settings.stream_buffer_bytes
        self.max_redirects = settings.upstream_max_redirects
        self.max_connections = settings.upstream_max_connections
        self.in_use = 0
        self.session = client_session(settings, self.resolver)
        # The same client for trusted origins, unguarded (see above).
        self.trusted_session = client_session(settings, aiohttp.ThreadedResolver())

    @contextmanager
    def slot(self) -> Iterator[None]:
        """One of UPSTREAM_MAX_CONNECTIONS origin connections, held for the
        life of an origin response (open it and release it inside). Raises
        UpstreamBusy at once when none is free: the connector would queue
        the request until the headers timeout (a 504), while every listener
        holding a connection may keep it for minutes."""
        if self.in_use >= self.max_connections:
            raise UpstreamBusy(f"all {self.max_connections} origin connections are in use")
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1

    async def open(
        self, method: str, url: str, headers: dict[str, str], *, trusted: bool = False
    ) -> aiohttp.ClientResponse:
        """Send the request and return the response once its headers are in,
        following a bounded number of redirects, each hop checked (none for
        a `trusted` origin, which answers itself: its redirects are not
        followed).

        Raises UpstreamRefused, TimeoutError (no headers in time) or
        aiohttp.ClientError. The caller releases the response.
        """
        # A presigned URL is sent as signed: re-encoding it breaks the signature.
        target = yarl.URL(url, encoded=trusted)
        headers = {**headers, "Accept-Encoding": "identity"}
        session = self.trusted_session if trusted else self.session
        for _ in range(self.max_redirects + 1):
            if not trusted:
                self.guard.check_url(target)
            try:
                async with asyncio.timeout(self.headers_timeout):
                    response = await session.request(
                        method, target, headers=headers, allow_redirects=False
                    )
            except aiohttp.ClientConnectorError as error:
                if isinstance(error.os_error, UpstreamRefused):
                    raise error.os_error from None  # the resolver refused it
                raise
            location = response.headers.get("Location")
            if trusted or response.status not in REDIRECTS or location is None:
                return response
            response.release()
            try:
                target = target.join(yarl.URL(location))
                target.port  # noqa: B018 (a port past 65535 raises here)
            except (ValueError, UnicodeError):
                raise UpstreamRefused("the origin sent an invalid redirect") from None
            if response.status == 303:
                method = "HEAD" if method == "HEAD" else "GET"
        raise UpstreamRefused(f"more than {self.max_redirects} redirects")

    async def close(self) -> None:
        await self.session.close()
        await self.trusted_session.close()


def client_session(settings: Settings, resolver: AbstractResolver) -> aiohttp.ClientSession:
    """An origin client: UPSTREAM_* timeouts and limits, bytes untouched."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            resolver=resolver,
            limit=settings.upstream_max_connections,
            ttl_dns_cache=10,
            # Certificates are always verified: UPSTREAM_CA_BUNDLE adds
            # trusted CAs (a private store's too), it never turns verification off.
            ssl=upstream_ssl_context(settings.upstream_ca_bundle),
        ),
        timeout=aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.upstream_connect_timeout,
            sock_read=settings.upstream_read_timeout,
        ),
        # Bytes pass through untouched: Content-Length and Range offsets
        # refer to what the origin sent.
        auto_decompress=False,
        read_bufsize=settings.stream_buffer_bytes,
        raise_for_status=False,
    )


UPSTREAM = web.AppKey("UPSTREAM", Upstream)


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    upstream = Upstream(app[SETTINGS])
    app[UPSTREAM] = upstream
    try:
        yield
    finally:
        await upstream.close()
