"""core/machine.py: the cores the defaults follow, a container's CPU limit included."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import machine
from core.machine import cgroup_cpu_limit, usable_cores


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cgroup_v2_limit_is_the_smallest_along_the_path(tmp_path: Path) -> None:
    """A pod's limit sits on an ancestor of the container's cgroup; "max" is no limit."""
    _tree(tmp_path, {"proc": "0::/kubepods/pod1/ctr\n", "cg/kubepods/cpu.max": "max 100000\n",
                     "cg/kubepods/pod1/cpu.max": "150000 100000\n", "cg/kubepods/pod1/ctr/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(tmp_path / "proc", tmp_path / "cg") == 1.5


def test_cgroup_v2_inside_a_container_namespace(tmp_path: Path) -> None:
    """Inside a container the process's cgroup reads "/": the limit is the mount's own file."""
    _tree(tmp_path, {"proc": "0::/\n", "cg/cpu.max": "50000 100000\n"})
    assert cgroup_cpu_limit(tmp_path / "proc", tmp_path / "cg") == 0.5
    _tree(tmp_path, {"cg/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(tmp_path / "proc", tmp_path / "cg") is None


def test_cgroup_v1_quota_over_period(tmp_path: Path) -> None:
    _tree(tmp_path, {"proc": "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n",
                     "cg/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
                     "cg/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(tmp_path / "proc", tmp_path / "cg") == 2.0
    _tree(tmp_path, {"cg/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1\n"})  # no quota
    assert cgroup_cpu_limit(tmp_path / "proc", tmp_path / "cg") is None


def test_no_cgroups_or_unreadable_ones_mean_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path) is None
    _tree(tmp_path, {"proc": "not a cgroup line\n0::/a\n", "cg/a/cpu.max": "garbage\n"})
    assert cgroup_cpu_limit(tmp_path / "proc", tmp_path / "cg") is None
    _tree(tmp_path, {"cg/a/cpu.max": "100000 0\n"})
    assert cgroup_cpu_limit(tmp_path / "proc", tmp_path / "cg") is None


@pytest.mark.parametrize(("limit", "expected"), [(None, 2), (0.5, 1), (1.0, 1), (1.5, 1), (2.0, 2), (8.0, 2)])
def test_usable_cores_is_the_affinity_capped_by_the_limit(monkeypatch: pytest.MonkeyPatch, limit: float | None,
                                                          expected: int) -> None:
    """A limit rounds down (no more busy processes than whole cores' worth), never below one core, and
    never above the cores the process may run on."""
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(machine, "cgroup_cpu_limit", lambda: limit)
    assert usable_cores() == expected
