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


def url_host_problem(url: str) -> str | None:
    """Why a URL's host is refused at registration: an address written out that is not
    public, or ``localhost``. Names are checked when sending, as they may change."""
    host = (httpx.URL(url).host or "").lower()
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
    host = url.host
    port = url.port or (443 if url.scheme == "https" else 80)
    address = literal_address(host)
    addresses = [address] if address is not None else await resolver(host, port)
    refused = [a for a in addresses if not is_public(a)]
    if refused or not addresses:
        raise LookupError(f"{host} resolves to a non-public address ({', '.join(refused)})")
    host_header = host if url.port is None else f"{host}:{url.port}"
    return [url.copy_with(host=a) for a in addresses], {"Host": host_header}
