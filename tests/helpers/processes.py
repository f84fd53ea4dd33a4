"""What the kernel says about a process of the stack."""

from __future__ import annotations

import os
from pathlib import Path


def effective_nice(pid: int) -> int:
    autogroup = Path(f"/proc/{pid}/autogroup")
    enabled = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    if enabled and autogroup.exists():
        return int(autogroup.read_text().split("nice")[1])
    return os.getpriority(os.PRIO_PROCESS, pid)
