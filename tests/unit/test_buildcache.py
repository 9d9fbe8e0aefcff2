"""Tools are built once into a version-keyed cache directory, atomically."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.buildcache import build_once


def test_built_once_moved_into_place_and_nothing_left_by_a_failed_build(tmp_path: Path) -> None:
    built: list[Path] = []

    def locate() -> Path | None:
        tool = tmp_path / "tool-v1" / "tool"
        return tool if tool.exists() else None

    def fail(staging: Path) -> None:
        (staging / "tool").write_text("half")
        raise RuntimeError("the build broke")

    with pytest.raises(RuntimeError, match="broke"):
        build_once(tmp_path, "tool-v1", locate, fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".build.lock"]  # no staging left

    def build(staging: Path) -> None:
        built.append(staging)
        (staging / "tool").write_text("binary")

    assert build_once(tmp_path, "tool-v1", locate, build) == tmp_path / "tool-v1" / "tool"
    assert build_once(tmp_path, "tool-v1", locate, build) == tmp_path / "tool-v1" / "tool"
    assert len(built) == 1
