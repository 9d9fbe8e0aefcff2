"""`python -m reconciler --once` as scripts use it, run as a real process on the real API server:
the diff of `--dry-run` and its exit status (kubectl diff's), `-o json`, every way it can fail
(each ends with the summary and its own exit status, never a traceback), signals, the progress
line on a terminal. Exit statuses: reconciler/exitcode.py."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.controlplane.launcher import LocalControlPlane, free_port, token_kubeconfig_yaml, wait_for
from tests.e2e.conftest import RECONCILER_USER, eventually, writes_by
from tests.e2e.nimbus import (
    create_nimbus_policy,
    kubearmor_policies,
    nimbus_policies,
    policy_names,
    rule,
)
from tests.e2e.refusals import admission_denies
from tests.faultproxy import Delay, FaultProxy, Rule, Stall, Status

REPO = Path(__file__).resolve().parents[2]
KSP = "security.kubearmor.com.v1.KubeArmorPolicy"
NP = "intent.security.nimbus.com.v1alpha1.NimbusPolicy"
MERGE = {"Content-Type": "application/merge-patch+json"}


def once(*args: str, kubeconfig: Path, python: tuple[str, ...] = (),
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m reconciler --once *args`, stdout and stderr piped (so no progress line)."""
    (result,) = at_once([args], [kubeconfig], python=python, timeout=timeout)
    return result


def at_once(runs: list[tuple[str, ...]], kubeconfigs: list[Path], python: tuple[str, ...] = (),
            timeout: float = 60) -> list[subprocess.CompletedProcess[str]]:
    """`once` for each of `runs` (its args) with its kubeconfig, all started together: for runs
    that cannot affect one another (each starting Python costs about half a second)."""
    started = [(args, subprocess.Popen([sys.executable, *python, "-m", "reconciler", "--once",
                                        "--kubeconfig", str(kubeconfig), *args],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       cwd=REPO))
               for args, kubeconfig in zip(runs, kubeconfigs, strict=True)]
    try:
        outputs = [process.communicate(timeout=timeout) for _, process in started]
    finally:
        for _, process in started:  # what still runs after a timeout
            process.kill()
            process.wait()
    results = []
    for (args, process), (out, err) in zip(started, outputs, strict=True):
        result = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert "\x1b[K" not in result.stderr  # no progress line when not on a terminal
        results.append(result)
    return results


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.splitlines()[-1]


def diff_files(stdout: str) -> dict[str, str]:
    """The unified diff split per object: {label: its diff}."""
    files: dict[str, str] = {}
    for section in re.split(r"^(?=diff -u -N )", stdout, flags=re.M):
        if section.startswith("diff -u -N "):
            label = section.split()[3].removeprefix("LIVE/")
            # the summary follows the last object's diff
            files[label] = "".join(line for line in section.splitlines(keepends=True)
                                   if line.startswith(("diff ", "---", "+++", "@@", "+", "-", " ")))
    return files


def changed(diff: str) -> list[str]:
    return [line for line in diff.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


async def test_dry_run_prints_a_diff_per_object_and_exits_1_until_converged(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        reconciler_kubeconfig: Path) -> None:
    scope = ("--namespace", namespace)
    await create_nimbus_policy(api, namespace, "a", [rule("dnsManipulation")])
    await create_nimbus_policy(api, namespace, "c", [rule("dnsManipulation"), rule("pkgMgrs")])
    # a whole --once run loads no HTTP server
    first = once(*scope, kubeconfig=reconciler_kubeconfig, python=("-X", "importtime"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert last_line(first) == "exit 0: converged"
    imported = {m.split(".")[0] for m in re.findall(r"^import time:.*\|\s*(\S+)$", first.stderr,
                                                    re.M)}
    assert {"kr8s", "reconciler", "cattrs"} <= imported and "aiohttp" not in imported
    clean = once(*scope, "--dry-run", kubeconfig=reconciler_kubeconfig)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "diff -u" not in clean.stdout and last_line(clean) == "exit 0: nothing would change"

    # one of each: a policy edited by hand (update), a new NimbusPolicy (create, status), a rule
    # taken out of one (delete, status)
    (await api.patch(f"{kubearmor_policies(namespace)}/a-dnsmanipulation", headers=MERGE,
                     content=json.dumps({"spec": {"action": "Audit"}}))).raise_for_status()
    await create_nimbus_policy(api, namespace, "b", [rule("pkgMgrs")])
    (await api.patch(f"{nimbus_policies(namespace)}/c", headers=MERGE, content=json.dumps(
        {"spec": {"rules": [rule("dnsManipulation")]}}))).raise_for_status()
    mark = len(control_plane.audit_events())
    # the same dry run as text and as JSON, together (neither writes: checked below)
    dry, as_json = at_once([(*scope, "--dry-run"), (*scope, "--dry-run", "-o", "json")],
                           [reconciler_kubeconfig] * 2)
    assert dry.returncode == 1, dry.stdout + dry.stderr
    files = diff_files(dry.stdout)
    label = {"update": f"{KSP}.{namespace}.a-dnsmanipulation",
             "create": f"{KSP}.{namespace}.b-pkgmgrs", "status b": f"{NP}.{namespace}.b",
             "delete": f"{KSP}.{namespace}.c-pkgmgrs", "status c": f"{NP}.{namespace}.c"}
    assert list(files) == list(label.values())  # in NimbusPolicy order, nothing else
    assert changed(files[label["update"]]) == ["-  action: Audit", "+  action: Block"]
    create = files[label["create"]].splitlines()
    assert create[3].startswith("@@ -0,0 +1,") and all(line[0] == "+" for line in create[4:])
    assert "+  name: b-pkgmgrs" in create and "+    - path: /usr/bin/apt" in create
    delete = files[label["delete"]].splitlines()
    assert delete[3].endswith(" +0,0 @@") and all(line[0] == "-" for line in delete[4:])
    assert "-  name: c-pkgmgrs" in delete and "managedFields" not in files[label["delete"]]
    status_b = changed(files[label["status b"]])
    assert status_b[0] == "+status:" and "+  - KubeArmorPolicy/b-pkgmgrs" in status_b
    assert sorted(line for line in changed(files[label["status c"]])
                  if "lastUpdated" not in line) == sorted([
        "-  - KubeArmorPolicy/c-pkgmgrs", "-  numberOfAdapterPolicies: 2",
        "+  numberOfAdapterPolicies: 1"])
    assert f"NimbusPolicy {namespace}/a: would patch a-dnsmanipulation (spec)" in dry.stdout
    assert last_line(dry) == "exit 1: changes would be made"

    assert as_json.returncode == 1
    doc = json.loads(as_json.stdout)
    assert (doc["result"], doc["exitCode"], doc["dryRun"]) == ("wouldChange", 1, True)
    assert [(d["verb"], d["kind"], d["name"], d["subresource"]) for d in doc["diff"]] == [
        ("patch", "KubeArmorPolicy", "a-dnsmanipulation", None),
        ("create", "KubeArmorPolicy", "b-pkgmgrs", None), ("patch", "NimbusPolicy", "b", "status"),
        ("delete", "KubeArmorPolicy", "c-pkgmgrs", None), ("patch", "NimbusPolicy", "c", "status")]
    assert doc["diff"][0]["unifiedDiff"] == files[label["update"]]
    assert {(p["name"], json.dumps(p["updated"])) for p in doc["nimbusPolicies"]} >= {
        ("a", json.dumps([{"name": "a-dnsmanipulation", "fields": ["spec"]}]))}
    assert {k: doc["counts"][k] for k in ("created", "updated", "deleted", "statusWritten")} == \
        {"created": 1, "updated": 1, "deleted": 1, "statusWritten": 2}
    assert writes_by(control_plane, RECONCILER_USER, since=mark) == []  # dry runs write nothing

    done = once(*scope, kubeconfig=reconciler_kubeconfig)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "created 1, updated 1, deleted 1, unchanged 1, failed 0, problems 0; 2 statuses " \
        "written" in done.stdout
    assert await policy_names(api, namespace) == {"a-dnsmanipulation", "b-pkgmgrs",
                                                  "c-dnsmanipulation"}


@pytest.fixture
def reader(control_plane: LocalControlPlane) -> Path:
    """An identity that may list NimbusPolicies but not KubeArmorPolicies."""
    user = "nimbus-kubearmor-np-reader"
    control_plane.grant(user, [{"apiGroups": ["intent.security.nimbus.com"],
                                "resources": ["nimbuspolicies"], "verbs": ["list", "watch"]}])
    return control_plane.identity_kubeconfig(user)


def with_token(kubeconfig: Path, path: Path, token: str = "not-a-token") -> Path:
    """`kubeconfig` with a token no one issued instead of its user's credentials: read fine,
    refused by the API server (401)."""
    config = yaml.safe_load(kubeconfig.read_text())
    config["users"][0]["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path


async def test_exit_4_with_a_summary_when_it_cannot_run(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        reconciler_kubeconfig: Path, reader: Path, tmp_path: Path) -> None:
    await create_nimbus_policy(api, namespace, "web", [rule("dnsManipulation")])
    scope = ("--namespace", namespace)
    garbage = tmp_path / "garbage.kubeconfig"
    garbage.write_text("{{{ not yaml")
    unreachable = control_plane.identity_kubeconfig(
        RECONCILER_USER, server=f"https://127.0.0.1:{free_port()}")  # nothing listens there
    too_long = tmp_path / ("k" * 300)  # a name over 255 bytes: the check itself fails
    bad_token = with_token(reconciler_kubeconfig, tmp_path / "bad-token.kubeconfig")
    refused = tmp_path / "refused.kubeconfig"
    refused.write_text(token_kubeconfig_yaml(control_plane.server, control_plane.ca.cert_pem,
                                             "nobody", "not-a-token"))
    cases = {
        tmp_path / "missing": f"kubeconfig {tmp_path / 'missing'}: no such file",
        too_long: f"kubeconfig {too_long}: File name too long",
        refused: f"the API server refused the credentials ({refused}): 401 Unauthorized",
        garbage: f"cannot load credentials ({garbage}): ParserError: while parsing",
        unreachable: "cannot reach the API server: ConnectError: ",
        bad_token: f"the API server refused the credentials ({bad_token}): 401 Unauthorized",
        reader: f"could not list kubearmorpolicies in {namespace}: 403 Forbidden: "
                "kubearmorpolicies.security.kubearmor.com is forbidden",
    }
    mark = len(control_plane.audit_events())
    # every case at once: none of them gets as far as a write (checked below)
    *results, json_result = at_once([scope] * len(cases) + [(*scope, "-o", "json")],
                                    [*cases, reader])
    for result, why in zip(results, cases.values(), strict=True):
        assert result.returncode == 4, result.stdout + result.stderr
        assert result.stdout.splitlines() == [
            "nothing reconciled", result.stdout.splitlines()[-1]]
        assert last_line(result).startswith(f"exit 4: could not run: {why}"), last_line(result)
    as_json = json.loads(json_result.stdout)
    assert (as_json["result"], as_json["exitCode"], as_json["counts"]["nimbusPolicies"]) == \
        ("notRun", 4, None)
    assert as_json["error"].startswith(f"could not list kubearmorpolicies in {namespace}: 403")
    assert writes_by(control_plane, "nimbus-kubearmor-np-reader", since=mark) == []
    assert await policy_names(api, namespace) == set()
    # bad flags are "could not run" too (argparse's 2 would read as bad input)
    bad_flag = subprocess.run([sys.executable, "-m", "reconciler", "--once", "--workers", "0"],
                              capture_output=True, text=True, timeout=30, cwd=REPO)
    assert bad_flag.returncode == 4 and "is not a whole number" in bad_flag.stderr


@pytest.fixture
def proxy(control_plane: LocalControlPlane, reconciler_kubeconfig: Path) -> Iterator[FaultProxy]:
    with FaultProxy.for_control_plane(control_plane, as_user=RECONCILER_USER) as running:
        yield running


def via(control_plane: LocalControlPlane, proxy: FaultProxy) -> Path:
    return control_plane.identity_kubeconfig(RECONCILER_USER, server=proxy.url)


@pytest.mark.faults
async def test_a_failed_list_exits_4_with_the_status(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:
    await create_nimbus_policy(api, namespace, "web", [rule("dnsManipulation")])
    proxy.add(Rule(Status(500, message="etcd is on fire"), kind="list", path="/nimbuspolicies"))
    # and, at the same time through a proxy of its own, the KubeArmorPolicy CRD not installed:
    # the API server's answer to such a LIST when its group is served (with no CRD of the group
    # at all, a plain-text "404 page not found")
    with FaultProxy.for_control_plane(control_plane, as_user=RECONCILER_USER) as no_crd:
        no_crd.add(Rule(Status(404, message="the server could not find the requested resource"),
                        kind="list", path="/kubearmorpolicies"))
        result, not_served = at_once([("--namespace", namespace)] * 2,
                                     [via(control_plane, proxy), via(control_plane, no_crd)])
    assert result.returncode == 4, result.stdout + result.stderr
    assert last_line(result) == (f"exit 4: could not run: could not list nimbuspolicies in "
                                 f"{namespace}: 500 InternalError: etcd is on fire")
    assert await policy_names(api, namespace) == set()
    result = not_served
    assert result.returncode == 4, result.stdout + result.stderr
    assert last_line(result).endswith(
        "404 NotFound: the server could not find the requested resource (is the "
        "KubeArmorPolicy CRD, kubearmorpolicies.security.kubearmor.com v1, installed?)")


@pytest.mark.faults
async def test_the_api_server_asking_to_come_back_later_is_waited_for(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:
    """A 429 with Retry-After (API Priority and Fairness under load) is not a failure of the
    run: the LIST and the write are sent again when the server said, as kubectl's would be;
    only when it goes on asking does the run give up, after 10 more tries."""
    await create_nimbus_policy(api, namespace, "web", [rule("dnsManipulation")])
    lists = proxy.add(Rule(Status(429, retry_after=1), kind="list", path="/nimbuspolicies",
                           times=1))
    creates = proxy.add(Rule(Status(429, retry_after=0), kind="write", method="POST",
                             path="/kubearmorpolicies", times=1))
    # and, at the same time through a proxy of its own (its run never gets as far as a write),
    # asked again and again: the summary says so, after the first try and 10 more
    with FaultProxy.for_control_plane(control_plane, as_user=RECONCILER_USER) as insisting:
        always = insisting.add(Rule(Status(429, retry_after=0), kind="list",
                                    path="/kubearmorpolicies"))
        result, given_up = at_once([("--namespace", namespace)] * 2,
                                   [via(control_plane, proxy), via(control_plane, insisting)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert last_line(result) == "exit 0: converged" and (lists.hits, creates.hits) == (1, 1)
    refused, listed = proxy.requests(kind="list", path="/nimbuspolicies")
    assert listed.at - refused.at >= 1.0  # when it said
    assert len(proxy.requests(kind="write", method="POST", path="/kubearmorpolicies")) == 2
    assert await policy_names(api, namespace) == {"web-dnsmanipulation"}
    result = given_up
    assert result.returncode == 4 and always.hits == 11, result.stdout + result.stderr
    assert last_line(result).startswith(f"exit 4: could not run: could not list "
                                        f"kubearmorpolicies in {namespace}: 429 TooManyRequests")


async def test_a_namespace_being_deleted_fails_the_run(
        api: httpx.AsyncClient, namespace: str, reconciler_kubeconfig: Path,
        control_plane: LocalControlPlane) -> None:
    """The controller waits such a NimbusPolicy out without retrying; --once must not call it
    converged (it used to exit 0)."""
    await create_nimbus_policy(api, namespace, "doomed", [rule("dnsManipulation")])

    def delete_probe(client: httpx.AsyncClient) -> Awaitable[httpx.Response]:
        return client.delete(f"{nimbus_policies(namespace)}/doomed", params={"dryRun": "All"})

    # The NimbusPolicy cannot be deleted, so the namespace stays Terminating with it inside.
    async with admission_denies(control_plane, namespace=namespace,
                                group="intent.security.nimbus.com", resource="nimbuspolicies",
                                operations=("DELETE",), probe=delete_probe):
        (await api.delete(f"/api/v1/namespaces/{namespace}")).raise_for_status()

        async def terminating() -> bool:
            response = await api.get(f"/api/v1/namespaces/{namespace}")
            return bool(response.json()["status"].get("phase") == "Terminating")
        await eventually(terminating, what="the namespace to be terminating")
        result = once("--namespace", namespace, kubeconfig=reconciler_kubeconfig)
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"NimbusPolicy {namespace}/doomed: skipped (its namespace is being deleted)" \
        in result.stdout
    assert last_line(result) == "exit 3: 1 NimbusPolicy failed"


def start(control_plane: LocalControlPlane, proxy: FaultProxy, namespace: str, log: Path,
          *args: str) -> subprocess.Popen[str]:
    with log.open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler", "--once", "--kubeconfig",
             str(via(control_plane, proxy)), "--namespace", namespace, "--log-format", "json",
             *args], stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO)


def logged(log: Path, message: str) -> Callable[[], bool]:
    return lambda: any(json.loads(line).get("msg") == message
                       for line in log.read_text().splitlines() if line.startswith("{"))


@pytest.mark.faults
async def test_ctrl_c_ends_with_the_summary_of_what_was_done(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy, tmp_path: Path) -> None:
    await create_nimbus_policy(api, namespace, "a", [rule("dnsManipulation")])
    await create_nimbus_policy(api, namespace, "b", [rule("dnsManipulation")])
    log = tmp_path / "stderr"

    # while listing: stops at once, nothing was written; SIGINT, and SIGTERM as at a pod's or a
    # CI job's end, each to a run of its own, together
    listing = proxy.add(Rule(Stall(), kind="list", path="/nimbuspolicies"))
    term_log = tmp_path / "stderr-sigterm"
    process = start(control_plane, proxy, namespace, log)
    terminated = start(control_plane, proxy, namespace, term_log)
    wait_for(lambda: listing.matched >= 2, 30, "both LISTs to be held")
    process.send_signal(signal.SIGINT)
    terminated.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=10)
    assert process.returncode == 130, out + log.read_text()
    assert out.splitlines() == ["nothing reconciled", "exit 130: interrupted by SIGINT"]
    out, _ = terminated.communicate(timeout=10)
    assert terminated.returncode == 143, out + term_log.read_text()
    assert out.splitlines()[-1] == "exit 143: interrupted by SIGTERM"
    proxy.remove(listing)
    listing.release()

    # while reconciling (one at a time): the reconcile under way finishes, no other starts
    creates = proxy.add(Rule(Stall(), kind="write", method="POST", path="/kubearmorpolicies"))
    process = start(control_plane, proxy, namespace, log, "--workers", "1")
    wait_for(lambda: creates.matched, 30, "the first create to be held")
    process.send_signal(signal.SIGINT)
    wait_for(logged(log, "stopping: the reconciles under way get a grace period to finish"), 10,
             "the signal to be handled")
    creates.release()
    out, _ = process.communicate(timeout=10)
    assert process.returncode == 130, out + log.read_text()
    assert out.splitlines() == [
        f"NimbusPolicy {namespace}/a: create a-dnsmanipulation; write status",
        "1 of 2 NimbusPolicies (0 skipped): created 1, updated 0, deleted 0, unchanged 0, "
        "failed 0, problems 0; 1 status written",
        "exit 130: interrupted by SIGINT"]
    assert "Traceback" not in log.read_text()
    proxy.remove(creates)

    # a second signal does not wait: the reconcile under way is cut short, and named
    held = proxy.add(Rule(Stall(), kind="write", method="POST", path="/kubearmorpolicies"))
    process = start(control_plane, proxy, namespace, log, "--workers", "1", "-o", "json")
    wait_for(lambda: held.matched, 30, "the create to be held")
    process.send_signal(signal.SIGINT)
    wait_for(logged(log, "stopping: the reconciles under way get a grace period to finish"), 10,
             "the signal to be handled")
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=10)
    doc = json.loads(out)
    assert process.returncode == 130 and doc["result"] == "interrupted"
    assert doc["cancelled"] == [f"{namespace}/b"] and doc["counts"]["reconciled"] == 1
    assert "a write they sent may have been made" in doc["message"]
    held.release()


async def test_a_signal_while_the_summary_is_written_cuts_nothing_short(
        api: httpx.AsyncClient, namespace: str, reconciler_kubeconfig: Path) -> None:
    """The run is over, its summary says how it ended: a SIGTERM now (a CI job cancelled as it
    finishes) leaves the JSON whole and the exit status the one it states; a second one ends
    it at once. (While loading: tests/unit/test_once_process.py.)"""
    for name in ("a", "b", "c", "d", "e", "f"):  # each a diff of about 3 KB
        await create_nimbus_policy(api, namespace, name, [rule("pkgMgrs")])

    def writing_the_summary() -> tuple[subprocess.Popen[bytes], bytes]:
        """A dry run, and the first byte of its summary: the process is writing it, and with
        4 KB of pipe and no reader it cannot finish before we read on."""
        process = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "--once", "--dry-run", "-o", "json",
             "--kubeconfig", str(reconciler_kubeconfig), "--namespace", namespace],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, pipesize=4096)
        assert process.stdout is not None
        return process, os.read(process.stdout.fileno(), 1)

    process, first = writing_the_summary()
    process.send_signal(signal.SIGTERM)
    rest, err = process.communicate(timeout=30)
    doc = json.loads(first + rest)
    assert len(first + rest) > 16_000 and (doc["result"], doc["exitCode"]) == ("wouldChange", 1)
    assert process.returncode == 1, err[-2000:]
    assert b"Traceback" not in err

    process, first = writing_the_summary()
    process.send_signal(signal.SIGTERM)
    # signals sent at once may arrive as one: again until it is gone
    wait_for(lambda: process.send_signal(signal.SIGTERM) or process.poll() is not None, 10,
             "a second SIGTERM to end it")
    assert process.returncode == 143
    rest, _ = process.communicate(timeout=30)
    assert len(first + rest) < len(json.dumps(doc, indent=2))  # cut short, as asked


def on_a_terminal(args: list[str], timeout: float = 60) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (stdout piped): (exit status, stdout, stderr)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=terminal, text=True, cwd=REPO)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out, b"".join(chunks).decode(errors="replace")


@pytest.mark.faults
async def test_progress_on_a_terminal_none_when_piped(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:
    for name in ("a", "b", "c"):
        await create_nimbus_policy(api, namespace, name, [rule("dnsManipulation")])
    # slow enough to be worth a progress line (shown after 0.5 s): a LIST and each write take a
    # while
    proxy.add(Rule(Delay(0.8), kind="list", path="/nimbuspolicies"))
    proxy.add(Rule(Delay(0.15), kind="write"))  # six writes, one at a time
    args = ["--namespace", namespace, "--workers", "1", "--log-level", "error"]
    piped = once(*args, "--dry-run", kubeconfig=via(control_plane, proxy))  # asserts no line
    assert piped.returncode == 1 and piped.stderr == ""
    code, out, err = on_a_terminal([sys.executable, "-m", "reconciler", "--once", "--kubeconfig",
                                    str(via(control_plane, proxy)), *args])
    assert code == 0, out + err
    assert "\r\x1b[Klisting: " in err
    shown = re.findall(r"reconciled (\d)/3 NimbusPolicies", err)
    assert shown and shown == sorted(shown), err
    assert err.endswith("\r\x1b[K")  # erased before the summary
    assert last_line_of(out) == "exit 0: converged"


def last_line_of(text: str) -> str:
    return text.splitlines()[-1]

