"""What the machine offers this process: its usable cores, for the defaults that follow them."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cgroup_cpu_limit", "usable_cores"]

_PROC_CGROUP = Path("/proc/self/cgroup")
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cores() -> int:
    """The cores this process may use: those it may run on (its CPU affinity where the OS has one, else
    the count), at most its cgroup's CPU quota, rounded down, at least 1 (a container's CPU limit:
    `docker run --cpus 1.5`, a Kubernetes pod's `limits.cpu`), which the affinity does not show."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return cores if limit is None else max(1, min(cores, int(limit)))


def cgroup_cpu_limit(proc_cgroup: Path = _PROC_CGROUP, root: Path = _CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup and its ancestors, in cores (the smallest along the path),
    from cgroup v2's ``cpu.max`` or v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; None where there is
    none or it cannot be read (no cgroups, another OS)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2: "0::/path"
            limits += [_v2_limit(d) for d in _directories(root, path)]
        elif "cpu" in controllers.split(","):  # cgroup v1: "4:cpu,cpuacct:/path"
            mount = root / controllers if (root / controllers).is_dir() else root / "cpu"
            limits += [_v1_limit(d) for d in _directories(mount, path)]
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _directories(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory under `mount` and its ancestors up to the mount (inside a container whose
    cgroup namespace shows "/", only the mount itself)."""
    directory = mount / path.strip("/")
    found = []
    while True:
        if directory.is_dir():
            found.append(directory)
        if directory == mount or mount not in directory.parents:
            return found
        directory = directory.parent


def _v2_limit(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()
        return None if quota == "max" or int(period) <= 0 else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_limit(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
