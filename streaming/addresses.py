"""Which IP addresses are public: the upstream guard's policy, written out.

`ipaddress`'s `is_global` is not used: its tables change between Python
patch releases (3.11.7 calls NAT64, IPv4-compatible and SIIT addresses
global). The policy here is explicit and fixed:

1. An IPv6 address that carries an IPv4 address is judged by the IPv4
   address it carries, because that is where a translator, tunnel or
   dual-stack socket sends the connection (`carried_ipv4`). Every carried
   address must pass. The IPv6 forms: IPv4-mapped `::ffff:0:0/96`,
   IPv4-compatible `::/96`, SIIT `::ffff:0:0:0/96`, NAT64 `64:ff9b::/96`
   and local-use NAT64 `64:ff9b:1::/48` (RFC 6052/8215, the IPv4 in the last
   32 bits), 6to4 `2002::/16` (bits 16-47), Teredo `2001::/32` (the server
   in bits 32-63, the client XORed in the last 32 bits), and ISATAP
   interface ids `…:0:5efe:a.b.c.d` / `…:200:5efe:a.b.c.d` (and their
   group-bit variants) under any /64, whose prefix is judged too.
2. Everything else is looked up in the IANA IPv4 and IPv6 Special-Purpose
   Address Registries (IPV4_SPECIAL, IPV6_SPECIAL, as of 2025): the most
   specific entry decides, and an entry not "Globally Reachable" is
   refused. Outside them, IPv4 is public unless multicast, and IPv6 only
   inside the global unicast space `2000::/3` (the rest is multicast,
   link-local, unique-local, site-local or reserved by the IETF).

UPSTREAM_ALLOW (the operator's override) is applied by the guard, before
and alongside this policy: see streaming/upstream.py.
"""

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address

# (network, globally reachable), from the IANA IPv4 Special-Purpose Address
# Registry; multicast (224.0.0.0/4) from the IPv4 Multicast Address Space.
IPV4_SPECIAL: tuple[tuple[IPv4Network, bool], ...] = tuple(
    (IPv4Network(network), reachable)
    for network, reachable in (
        ("0.0.0.0/8", False),  # "this network" (RFC 791)
        ("10.0.0.0/8", False),  # private (RFC 1918)
        ("100.64.0.0/10", False),  # shared address space, carrier-grade NAT (RFC 6598)
        ("127.0.0.0/8", False),  # loopback
        ("169.254.0.0/16", False),  # link-local, cloud metadata (RFC 3927)
        ("172.16.0.0/12", False),  # private
        ("192.0.0.0/24", False),  # IETF protocol assignments (RFC 6890), DS-Lite, NAT64 discovery
        ("192.0.0.9/32", True),  # Port Control Protocol anycast (RFC 7723)
        ("192.0.0.10/32", True),  # TURN anycast (RFC 8155)
        ("192.0.2.0/24", False),  # documentation TEST-NET-1
        ("192.31.196.0/24", True),  # AS112-v4
        ("192.52.193.0/24", True),  # AMT
        ("192.88.99.0/24", False),  # deprecated 6to4 relay anycast (RFC 7526)
        ("192.168.0.0/16", False),  # private
        ("192.175.48.0/24", True),  # direct delegation AS112
        ("198.18.0.0/15", False),  # benchmarking (RFC 2544)
        ("198.51.100.0/24", False),  # documentation TEST-NET-2
        ("203.0.113.0/24", False),  # documentation TEST-NET-3
        ("224.0.0.0/4", False),  # multicast
        ("240.0.0.0/4", False),  # reserved (RFC 1112)
        ("255.255.255.255/32", False),  # limited broadcast
    )
)

# From the IANA IPv6 Special-Purpose Address Registry; the forms carrying
# IPv4 (::ffff:0:0/96, 64:ff9b::/96, 64:ff9b:1::/48, 2001::/32, 2002::/16)
# never reach this table: they are judged by what they carry.
IPV6_SPECIAL: tuple[tuple[IPv6Network, bool], ...] = tuple(
    (IPv6Network(network), reachable)
    for network, reachable in (
        ("::/128", False),  # unspecified
        ("::1/128", False),  # loopback
        ("100::/64", False),  # discard-only (RFC 6666)
        ("100:0:0:1::/64", False),  # dummy IPv6 prefix (RFC 9780)
        ("2001::/23", False),  # IETF protocol assignments
        ("2001:1::1/128", True),  # Port Control Protocol anycast
        ("2001:1::2/128", True),  # TURN anycast
        ("2001:1::3/128", True),  # DNS-SD service registration protocol anycast
        ("2001:2::/48", False),  # benchmarking
        ("2001:3::/32", True),  # AMT
        ("2001:4:112::/48", True),  # AS112-v6
        ("2001:10::/28", False),  # deprecated ORCHID
        ("2001:20::/28", True),  # ORCHIDv2
        ("2001:30::/28", True),  # drone remote ID entity tags
        ("2001:db8::/32", False),  # documentation
        ("2620:4f:8000::/48", True),  # direct delegation AS112
        ("3fff::/20", False),  # documentation (RFC 9637)
        ("5f00::/16", False),  # segment routing SIDs (RFC 9602)
        ("fc00::/7", False),  # unique-local
        ("fe80::/10", False),  # link-local
    )
)
GLOBAL_UNICAST = IPv6Network("2000::/3")  # IANA IPv6 Address Space

# The IPv6 forms that stand for an IPv4 address in their last 32 bits.
LAST_32_BITS = tuple(
    IPv6Network(network)
    for network in (
        "::ffff:0:0/96",  # IPv4-mapped (RFC 4291)
        "::/96",  # IPv4-compatible, deprecated (RFC 4291); :: and ::1 judge as 0.0.0.x
        "::ffff:0:0:0/96",  # SIIT IPv4-translated (RFC 2765)
        "64:ff9b::/96",  # NAT64 well-known prefix (RFC 6052)
        "64:ff9b:1::/96",  # local-use NAT64 (RFC 8215), the /96 at its start
    )
)
LOCAL_NAT64 = IPv6Network("64:ff9b:1::/48")
SIX_TO_FOUR = IPv6Network("2002::/16")
TEREDO = IPv6Network("2001::/32")
U32 = 0xFFFFFFFF


def carried_ipv4(ip: IPv6Address) -> tuple[IPv4Address, ...] | None:
    """The IPv4 addresses an IPv6 address stands for, or None when it is
    not one of the forms that carry IPv4 in place of an IPv6 destination.

    A local-use NAT64 address outside the /96 layout (64:ff9b:1::/48 with
    bits between the prefix and the last 32 set) carries an IPv4 address
    somewhere this policy cannot tell: it stands for 0.0.0.0, refused.
    """
    bits = int(ip)
    if any(ip in network for network in LAST_32_BITS):
        return (IPv4Address(bits & U32),)
    if ip in LOCAL_NAT64:
        return (IPv4Address(0),)
    if ip in SIX_TO_FOUR:
        return (IPv4Address((bits >> 80) & U32),)
    if ip in TEREDO:
        server = IPv4Address((bits >> 64) & U32)
        client = IPv4Address(~bits & U32)
        return (server, client)
    return None


def isatap_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address in an ISATAP interface id (RFC 5214 §6.1: 00-00-5E-FE
    after the u and g bits, then the IPv4 address), else None."""
    interface_id = int(ip) & 0xFFFFFFFFFFFFFFFF
    if (interface_id >> 32) & 0xFCFFFFFF == 0x00005EFE:
        return IPv4Address(interface_id & U32)
    return None


def registry_allows(ip: IPAddress) -> bool:
    """The special-purpose registries' verdict for `ip`: the most specific
    entry decides; outside them, public IPv4, and IPv6 only in 2000::/3."""
    table = IPV4_SPECIAL if ip.version == 4 else IPV6_SPECIAL
    matches = [(net.prefixlen, reachable) for net, reachable in table if ip in net]
    if matches:
        return max(matches)[1]
    return ip.version == 4 or ip in GLOBAL_UNICAST


def is_public(ip: IPAddress, allowed: Callable[[IPAddress], bool] = lambda _: False) -> bool:
    """Whether a connection to `ip` stays off internal networks, by the
    policy above; `allowed(address)` is the operator's override, asked of
    the address and of every IPv4 address it carries."""
    if ip.version == 6:
        ip = IPv6Address(int(ip))  # a zone id (fe80::1%eth0) changes nothing
    if allowed(ip):
        return True
    if ip.version == 4:
        return registry_allows(ip)
    carried = carried_ipv4(ip)
    if carried is not None:
        return all(allowed(v4) or registry_allows(v4) for v4 in carried)
    isatap = isatap_ipv4(ip)
    if isatap is not None and not (allowed(isatap) or registry_allows(isatap)):
        return False
    return registry_allows(ip)
