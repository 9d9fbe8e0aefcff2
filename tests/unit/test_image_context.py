"""What the test image's tag and the base's cache are keyed by (tests/image/): exactly what goes
into them, so a warm run reuses them and any change builds again."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.image import base, build

REPO = Path(__file__).resolve().parents[2]


def test_the_context_is_what_dockerignore_lets_in_and_the_dockerfile() -> None:
    files = {str(p.relative_to(REPO)) for p in build.context_files()}
    assert {"Dockerfile", ".dockerignore", "pyproject.toml", "uv.lock", "uv-requirements.txt",
            "README.md", "reconciler/kube.py", "reconciler/__main__.py"} <= files
    assert not {f for f in files if f.startswith(("tests/", "config/")) or "__pycache__" in f}
    assert {str(p.relative_to(REPO)) for p in (REPO / "reconciler").glob("*.py")} <= files


def test_the_tag_changes_with_a_file_of_the_context_and_with_the_base(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "uv.lock",
                 "uv-requirements.txt", "README.md"):
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    (tmp_path / "reconciler").mkdir()
    (tmp_path / "reconciler" / "__init__.py").write_text("")
    monkeypatch.setattr(build, "REPO", tmp_path)
    before = build.context_digest("base:1")
    assert build.context_digest("base:2") != before
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "new.py").write_text("x = 1\n")  # not in the context
    (tmp_path / "reconciler" / "__pycache__").mkdir()
    (tmp_path / "reconciler" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert build.context_digest("base:1") == before
    (tmp_path / "reconciler" / "__init__.py").write_text("# changed\n")
    assert build.context_digest("base:1") != before


def test_the_base_is_keyed_by_its_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    key = base.cache_key()
    assert key == base.cache_key()
    for part in ("SUITE", "SOURCES", "OPTIONS", "CHANGES"):
        with monkeypatch.context() as patched:
            value = getattr(base, part)
            patched.setattr(base, part, value + "x" if isinstance(value, str) else (*value, "x"))
            assert base.cache_key() != key, part
