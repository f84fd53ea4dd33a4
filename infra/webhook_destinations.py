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


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not an address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    return ip.is_global and not ip.is_multicast


def literal_address(host: str) -> str | None:
    """``host`` when it is an IP address written out, else None (a name)."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
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
