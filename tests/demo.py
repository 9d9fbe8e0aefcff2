"""`make demo`: the reconciler at work on a throwaway local control plane.

Starts kube-apiserver + etcd + the garbage collector, applies the samples in config/samples (the
NimbusPolicies as the Nimbus core would write them), runs `python -m reconciler` under its own
least-privilege RBAC, shows the KubeArmorPolicies and the NimbusPolicy status, edits and deletes
policies to show them repaired, then tears everything down.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.controlplane.assets import build
from tests.controlplane.launcher import LocalControlPlane, free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "config" / "samples"
NAMESPACE = "shop"
GROUP = "/apis/intent.security.nimbus.com/v1alpha1"
KSP = f"/apis/security.kubearmor.com/v1/namespaces/{NAMESPACE}/kubearmorpolicies"
IDENTITY = "system:serviceaccount:nimbus-kubearmor-system:nimbus-kubearmor"


def step(number: int, text: str) -> None:
    print(f"\n\033[1m== {number}/6 {text}\033[0m", flush=True)


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((SAMPLES / name).read_text()) if d]


class Demo:
    def __init__(self, control_plane: LocalControlPlane) -> None:
        self.cp = control_plane
        self.client = control_plane.client()
        kubectl = control_plane.assets.directory / "kubectl"
        self.kubectl = str(kubectl) if kubectl.exists() else shutil.which("kubectl")
        if self.kubectl is None:
            raise SystemExit("the demo needs kubectl: it is built with the control plane, or "
                             "put one on PATH when KUBEBUILDER_ASSETS has none")

    def show(self, *args: str) -> None:
        """What `kubectl ARGS` prints (kubectl is built with the control plane)."""
        print(f"$ kubectl {' '.join(args)}", flush=True)
        assert self.kubectl is not None
        subprocess.run([self.kubectl, "--kubeconfig", str(self.cp.kubeconfig), *args], check=False)

    def apply_samples(self) -> None:
        self.client.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}}).raise_for_status()
        for intent in documents("securityintents.yaml"):
            self.client.post(f"{GROUP}/securityintents", json=intent).raise_for_status()
        bindings = {}
        for binding in documents("securityintentbinding.yaml"):
            response = self.client.post(
                f"{GROUP}/namespaces/{NAMESPACE}/securityintentbindings", json=binding)
            response.raise_for_status()
            bindings[binding["metadata"]["name"]] = response.json()
        for policy in documents("nimbuspolicies.yaml"):
            owner = bindings[policy["metadata"]["name"]]
            policy["metadata"]["ownerReferences"] = [{
                "apiVersion": owner["apiVersion"], "kind": owner["kind"],
                "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                "controller": True, "blockOwnerDeletion": True}]
            self.client.post(f"{GROUP}/namespaces/{NAMESPACE}/nimbuspolicies",
                             json=policy).raise_for_status()
        print(f"created namespace {NAMESPACE}, {len(documents('securityintents.yaml'))} "
              f"SecurityIntents, {len(bindings)} SecurityIntentBindings and their NimbusPolicies")

    def policies(self) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in self.client.get(KSP).json()["items"]}

    def start_reconciler(self) -> subprocess.Popen[str]:
        for name in ("role", "metrics_auth_role"):  # what it does, and its secure /metrics
            role = yaml.safe_load((REPO / "config" / "rbac" / f"{name}.yaml").read_text())
            self.cp.grant(IDENTITY, role["rules"], role=name)
        kubeconfig = self.cp.identity_kubeconfig(IDENTITY)
        metrics_port = free_port()
        command = [sys.executable, "-m", "reconciler", "--kubeconfig", str(kubeconfig),
                   "--log-format", "text", "--metrics-bind-address", f"127.0.0.1:{metrics_port}",
                   "--health-probe-bind-address", f"127.0.0.1:{free_port()}"]
        print("$ python -m reconciler " + " ".join(command[3:]), flush=True)
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.metrics_url = f"https://127.0.0.1:{metrics_port}/metrics"

        def relay() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                print(f"  reconciler | {line.rstrip()}", flush=True)

        threading.Thread(target=relay, daemon=True).start()
        return process

    def timed_repair(self, what: str, kubectl_args: list[str], repaired: Any) -> None:
        """Run `kubectl ARGS` (the edit a person would make) and time the repair."""
        started = time.monotonic()
        self.show(*kubectl_args)
        wait_for(repaired, 30, what)
        print(f"   -> repaired in {(time.monotonic() - started) * 1000:.0f} ms "
              "(kubectl's own start-up included)", flush=True)


def main() -> int:
    step(1, "local control plane (kube-apiserver, etcd, garbage collector) on 127.0.0.1")
    assets = build(log=sys.stdout)
    with LocalControlPlane(assets, log=sys.stdout) as control_plane:
        demo = Demo(control_plane)
        step(2, "the samples in config/samples: intents, bindings, NimbusPolicies")
        demo.apply_samples()
        step(3, "the reconciler, as the identity config/rbac allows")
        reconciler = demo.start_reconciler()
        try:
            expected = 6
            wait_for(lambda: len(demo.policies()) == expected, 60,
                     f"{expected} KubeArmorPolicies")
            wait_for(lambda: all((np.get("status") or {}).get("numberOfAdapterPolicies") is not None
                                 for np in demo.client.get(
                                     f"{GROUP}/namespaces/{NAMESPACE}/nimbuspolicies").json()["items"]),
                     30, "every NimbusPolicy's status")
            step(4, "what it made")
            demo.show("get", "kubearmorpolicies", "-A")
            demo.show("get", "nimbuspolicies", "-A")
            demo.show("get", "nimbuspolicy", "web", "-n", NAMESPACE,
                      "-o", "jsonpath={.status.adapterPolicies}")
            print()
            demo.show("get", "events", "-n", NAMESPACE, "--field-selector", "type=Warning")
            step(5, "drift: someone edits and deletes generated policies")
            name = "web-dnsmanipulation"
            demo.timed_repair(
                "the edit to be reverted",
                ["patch", "kubearmorpolicy", name, "-n", NAMESPACE, "--type", "merge",
                 "-p", json.dumps({"spec": {"action": "Audit"}})],
                lambda: demo.policies()[name]["spec"]["action"] == "Block")
            gone = "web-escapetohost-disallowcapabilities"
            old_uid = demo.policies()[gone]["metadata"]["uid"]
            demo.timed_repair(
                "the deleted policy to be recreated",
                ["delete", "kubearmorpolicy", gone, "-n", NAMESPACE],
                lambda: gone in (p := demo.policies()) and p[gone]["metadata"]["uid"] != old_uid)
            demo.show("get", "kubearmorpolicies", "-n", NAMESPACE)
            print("\nmetrics, over HTTPS: without a token "
                  f"{httpx.get(demo.metrics_url, timeout=5, verify=False).status_code}; with the "
                  "token of a ServiceAccount bound to config/rbac's metrics-reader (a few):")
            reader = yaml.safe_load((REPO / "config/rbac/metrics_reader_role.yaml").read_text())
            control_plane.service_account_kubeconfig("default", "prometheus", reader["rules"])
            token = control_plane.service_account_token("default", "prometheus")
            for line in httpx.get(demo.metrics_url, timeout=5, verify=False,
                                  headers={"Authorization": f"Bearer {token}"}).text.splitlines():
                if line.startswith(("nimbus_kubearmor_drift_corrections_total",
                                    "nimbus_kubearmor_policy_writes_total",
                                    "controller_runtime_reconcile_total")):
                    print(f"  {line}")
        finally:
            step(6, "tear down")
            reconciler.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = reconciler.wait(timeout=15)
            print(f"reconciler exited {code} in {time.monotonic() - started:.1f}s after SIGTERM")
            demo.client.close()
    print("control plane stopped and removed; done.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
