"""Where a webhook may go: public addresses only, unless the deployment allows private ones.

An endpoint URL is chosen by an app. Without this check our worker would post signed
requests wherever the name points: loopback (this host's Vault, Keycloak, Temporal),
the private network, or a cloud's metadata service (169.254.169.254). With
``webhooks_allow_private_addresses`` false (production), the sender resolves the host
itself, refuses when any address is not a public one, and connects to the address it
checked (``pinned``), so a name cannot resolve once to a public address for the check and
again to a private one for the connection. The dev stack's receivers listen on loopback,
so the dev setting allows them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

import httpx

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# IPv6 ranges that carry an IPv4 address in their last 32 bits, which the network may
# translate to (NAT64 64:ff9b::a9fe:a9fe reaches 169.254.169.254), or that are not public
# although Python's ``is_global`` says so (site-local fec0::/10, deprecated but routed by
# some networks; the local-use NAT64 prefix 64:ff9b:1::/48).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# SIIT's IPv4-translated addresses (RFC 2765), which Python takes for global.
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_NOT_PUBLIC_V6 = (ipaddress.IPv6Network("fec0::/10"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not an address
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in network for network in _NOT_PUBLIC_V6):
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return embedded.is_global and not embedded.is_multicast
    return ip.is_global and not ip.is_multicast


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to: ::ffff:127.0.0.1 is loopback, and so are the
    NAT64, 6to4 and IPv4-compatible forms of it."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if (
        ip in _NAT64
        or ip in _IPV4_TRANSLATED
        or (ip in _IPV4_COMPATIBLE and int(ip) > 1)  # not :: or ::1
    ):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def literal_address(host: str) -> str | None:
    """``host`` when it is an IP address written out, else None (a name). Includes the
    shorthand IPv4 forms resolvers accept (``127.1``, ``2130706433``, ``0x7f000001``)."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefx." for c in host) and host[0].isdigit():
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


def parse_url(url: str) -> httpx.URL:
    """``url`` as the sender parses it; raises ``ValueError`` for one it cannot (httpx is
    stricter than ``urllib``: ``0177.0.0.1`` is no IPv4 address to it, ``xn--`` no IDNA
    label), so registration and sending refuse the same URLs."""
    try:
        parsed = httpx.URL(url)
        parsed.host  # noqa: B018 - an IDNA label is decoded (and refused) only when read
    except (httpx.InvalidURL, ValueError) as exc:  # idna.IDNAError is a ValueError
        raise ValueError(f"the URL cannot be parsed: {exc}") from exc
    return parsed


def url_host_problem(url: str) -> str | None:
    """Why a URL's host is refused at registration: one that cannot be parsed, an address
    written out that is not public, or ``localhost``. Names are checked when sending, as
    they may change."""
    try:
        host = (parse_url(url).host or "").lower()
    except ValueError as exc:
        return str(exc)
    host = host.removesuffix(".")  # "localhost." is localhost
    if host == "localhost" or host.endswith(".localhost"):
        return "the URL must point at a public address, not localhost"
    address = literal_address(host)
    if address is not None and not is_public(address):
        return f"the URL must point at a public address, not {address}"
    return None


async def pinned(url: httpx.URL, resolver: Resolver) -> tuple[list[httpx.URL], dict[str, str]]:
    """The URLs to connect to, one per checked address of the name in the resolver's order
    (a dual-stack name has an IPv6 and an IPv4 one; the sender tries the next when it
    cannot connect), and the headers that keep the request addressed to the name (Host;
    TLS is verified against the name through ``sni_hostname``). Raises ``LookupError``
    naming a refused address."""
    host = ascii_host(url)
    port = url.port or (443 if url.scheme == "https" else 80)
    address = literal_address(host)
    addresses = [address] if address is not None else await resolver(host, port)
    refused = [a for a in addresses if not is_public(a)]
    if refused or not addresses:
        raise LookupError(f"{host} resolves to a non-public address ({', '.join(refused)})")
    # The Host header httpx itself writes for the URL: the IDNA (ASCII) form of a name, an
    # IPv6 address in brackets, the port only when it is not the scheme's default.
    host_header = url.netloc.decode("ascii")
    return [url.copy_with(host=a) for a in addresses], {"Host": host_header}


def ascii_host(url: httpx.URL) -> str:
    """The host as it goes on the wire (resolver, Host, TLS): ``url.host`` is the Unicode
    form of a non-ASCII name, which is neither a valid header value nor, for a name such
    as ``ß.example``, the name IDNA 2008 resolves (the resolver's IDNA 2003 maps it to
    ``ss.example``). An IPv6 address comes without brackets."""
    return url.raw_host.decode("ascii")
