"""Which Kubernetes release the control plane is built from, and the go.mod generated for it.
(The generated modules are built for real by `make controlplane`; these check the rules.)"""

from __future__ import annotations

import pytest

from tests.controlplane import gen_gomod, versions


def upstream(go: str, *extra: str) -> str:
    """A go.mod shaped like k8s.io/kubernetes's: staging modules replaced by local paths."""
    return "\n".join([
        "module k8s.io/kubernetes", "", go, *extra, "",
        "require (", "\tk8s.io/api v0.0.0", "\tk8s.io/endpointslice v0.0.0", ")", "",
        "replace (",
        "\tk8s.io/api => ./staging/src/k8s.io/api",
        "\tk8s.io/endpointslice => ./staging/src/k8s.io/endpointslice",
        ")", "",
    ])


def test_staging_modules_point_at_the_release_tags() -> None:
    gomod = gen_gomod.render("v1.37.2", upstream("go 1.26.0", "godebug default=go1.26"))
    assert "\tk8s.io/api => k8s.io/api v0.37.2" in gomod.splitlines()
    assert "\tk8s.io/endpointslice => k8s.io/endpointslice v0.37.2" in gomod.splitlines()
    assert "require k8s.io/kubernetes v1.37.2" in gomod.splitlines()
    assert "./staging" not in gomod


def test_a_recent_release_keeps_its_go_version_and_godebug() -> None:
    lines = gen_gomod.render("v1.37.2", upstream("go 1.26.0", "godebug default=go1.26")).splitlines()
    assert "go 1.26.0" in lines
    assert [line for line in lines if line.startswith("godebug")] == ["godebug default=go1.26"]


def test_an_older_release_gets_the_tool_directive_and_keeps_its_godebug_defaults() -> None:
    # `tool` needs go 1.24; raising `go` must not change the GODEBUG defaults the release had
    lines = gen_gomod.render("v1.30.14", upstream("go 1.22.0")).splitlines()
    assert "go 1.24.0" in lines and "tool (" in lines
    assert [line for line in lines if line.startswith("godebug")] == ["godebug default=go1.22"]
    # one that sets its own default keeps it, and its other settings
    lines = gen_gomod.render("v1.32.13", upstream(
        "go 1.23.0", "godebug default=go1.23", "godebug winsymlink=0")).splitlines()
    assert "go 1.24.0" in lines
    assert [line for line in lines if line.startswith("godebug")] == [
        "godebug default=go1.23", "godebug winsymlink=0"]


def test_a_staging_module_the_proxy_lacks_is_taken_at_the_substitute_and_said_so() -> None:
    lines = gen_gomod.render("v1.31.14", upstream("go 1.22.0"),
                             {"k8s.io/endpointslice": "v0.31.13"}).splitlines()
    assert "\tk8s.io/endpointslice => k8s.io/endpointslice v0.31.13" in lines
    assert "\tk8s.io/api => k8s.io/api v0.31.14" in lines
    assert ("// k8s.io/endpointslice v0.31.14 is not served by the Go module proxy: "
            "v0.31.13 instead.") in lines


@pytest.mark.parametrize("bad", ["1.37.2", "v1.37", "v1.38.0-beta.0", "latest"])
def test_what_is_not_a_release_is_refused_by_name(bad: str) -> None:
    with pytest.raises(gen_gomod.GoModError, match="is not a Kubernetes release"):
        gen_gomod.staging_version(bad)


def test_a_go_mod_without_go_line_or_staging_modules_is_refused() -> None:
    with pytest.raises(gen_gomod.GoModError, match="no `go` line"):
        gen_gomod.render("v1.37.2", "module k8s.io/kubernetes\n")
    with pytest.raises(gen_gomod.GoModError, match="replaces no staging modules"):
        gen_gomod.render("v1.37.2", "module k8s.io/kubernetes\n\ngo 1.26.0\n")


def test_supported_releases_one_per_minor_oldest_first() -> None:
    minors = [versions.minor(v) for v in versions.SUPPORTED]
    assert minors == list(range(minors[0], minors[0] + len(minors)))  # no gap, none twice


def test_the_release_asked_for_else_the_newest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_VERSION", raising=False)
    assert versions.requested() == versions.NEWEST
    monkeypatch.setenv("KUBERNETES_VERSION", "")  # what `make` exports when it is unset
    assert versions.requested() == versions.NEWEST
    monkeypatch.setenv("KUBERNETES_VERSION", "v1.30.14")
    assert versions.requested() == "v1.30.14"
    monkeypatch.setenv("KUBERNETES_VERSION", "1.30")
    with pytest.raises(versions.VersionError, match=r"KUBERNETES_VERSION='1.30' is not a Kubernetes"):
        versions.requested()
