"""Every server the stack starts listens on loopback only, children included (Keycloak's JVM,
PostgreSQL's backends): nothing of ours is reachable from another machine."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from infra.settings import Settings
from infra.stack.launcher import Stack
from infra.stack.process import PROCESS_GROUP, ProcessTable, stat_fields
from tests.helpers.processes import effective_nice

# /proc/net/{tcp,udp}{,6} states: 0A is a listening TCP socket, 07 a bound UDP one.
_LISTENING = {"tcp": "0A", "tcp6": "0A", "udp": "07", "udp6": "07"}


def _group_members(group: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = stat_fields(int(entry))
        except OSError:
            continue
        if int(fields[PROCESS_GROUP]) == group:
            members.append(int(entry))
    return members


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    # IPv6 in /proc: four 32-bit words, each in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return ipaddress.IPv6Address(words)


def _listening(inodes: set[str]) -> list[tuple[str, str]]:
    found = []
    for table, state in _LISTENING.items():
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == state and parts[9] in inodes:
                host, port = parts[1].split(":")
                found.append((str(_address(host)), str(int(port, 16))))
    return found


def _loopback(host: str) -> bool:
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def test_every_server_of_the_stack_listens_on_loopback_only(
    stack: Stack, settings: Settings
) -> None:
    table = ProcessTable(settings.stack_path)
    seen = {}
    for name in stack.services:
        record = table.get(name)
        if record is None:
            continue
        inodes = set().union(*(_socket_inodes(p) for p in _group_members(record.pid)))
        seen[name] = _listening(inodes)
    assert seen.get("keycloak") and seen.get("postgres"), seen  # the check sees sockets
    exposed = {
        name: [f"{host}:{port}" for host, port in sockets if not _loopback(host)]
        for name, sockets in seen.items()
    }
    assert not any(exposed.values()), exposed


def test_keycloaks_database_is_for_this_user_alone(stack: Stack, settings: Settings) -> None:
    """It holds the realm's signing keys, client secrets and password hashes."""
    data = next((settings.stack_path / "keycloak").glob("keycloak-*/data"))
    assert data.stat().st_mode & 0o077 == 0, oct(data.stat().st_mode)


def test_the_stack_api_runs_first_in_line_for_a_core(settings: Settings) -> None:
    """What `bfc up` does for the API on a shared host (BFC_API_CPU_NICE)."""
    record = ProcessTable(settings.stack_path).get("api")
    if record is None:
        pytest.skip("the stack's API is not running")
    if os.geteuid() != 0:
        pytest.skip("a raised priority needs root or CAP_SYS_NICE")
    assert effective_nice(record.pid) == settings.api_cpu_nice
