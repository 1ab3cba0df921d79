"""CPU counting for the worker defaults: a container's CPU quota, not its node's CPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from handserve import runtimes


def test_cgroup_v2_quota_is_read(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert runtimes._cgroup_cpu_quota(tmp_path) == pytest.approx(1.5)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtimes._cgroup_cpu_quota(tmp_path) is None


def test_cgroup_v1_quota_is_read(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtimes._cgroup_cpu_quota(tmp_path) == pytest.approx(2.0)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert runtimes._cgroup_cpu_quota(tmp_path) is None


def test_available_cpus_is_capped_by_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(runtimes, "_cgroup_cpu_quota", lambda: 1.5)
    assert runtimes.available_cpus() == 2  # a partial CPU still gets a worker
    monkeypatch.setattr(runtimes, "_cgroup_cpu_quota", lambda: None)
    assert runtimes.available_cpus() == 64
