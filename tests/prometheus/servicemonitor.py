"""Does a ServiceMonitor scrape the reconciler? Checked on rendered manifests (kustomize's, or a
Helm chart's `helm template`): the monitor selects the metrics Service by its labels, in a
namespace it looks in; the endpoint's port name is one of that Service's ports; the port's
targetPort is a container port of the pods the Service selects, the one the reconciler serves
/metrics on; the endpoint scrapes as the reconciler serves it (HTTPS with a bearer token, and
either insecureSkipVerify for its self-signed certificate or the CA of the Secret it mounts as
its certificate; plain HTTP with --metrics-secure=false); and the job Prometheus will give the
targets is the one the alerts and dashboards select. `scrape_config` turns an endpoint into the
Prometheus scrape configuration the Prometheus operator generates from it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

Doc = dict[str, Any]
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
# the reconciler's --metrics-bind-address default, with and without --metrics-secure
DEFAULT_METRICS_ADDRESS = {True: ":8443", False: ":8080"}


def service_monitor_problems(documents: Iterable[Doc], job_patterns: Iterable[str]) -> list[str]:
    """What keeps the ServiceMonitors in `documents` from scraping the reconciler's metrics
    under a job every pattern of `job_patterns` (the alerts' job=~ regexes) matches; empty when
    nothing does."""
    documents = [d for d in documents if d]
    monitors = [d for d in documents if d["kind"] == "ServiceMonitor"]
    services = [d for d in documents if d["kind"] == "Service"]
    workloads = [d for d in documents if d["kind"] in WORKLOADS]
    problems = [] if monitors else ["no ServiceMonitor"]
    for monitor in monitors:
        where = f"ServiceMonitor {monitor['metadata']['name']}"
        spec = monitor["spec"]
        selected = [s for s in services
                    if _namespace_selected(spec.get("namespaceSelector"), _namespace(monitor),
                                           _namespace(s))
                    and _selects(spec.get("selector", {}), s["metadata"].get("labels", {}))]
        if not selected:
            problems.append(f"{where}: selects no Service")
        for service in selected:
            job = (service["metadata"].get("labels", {}).get(spec["jobLabel"], "")
                   if spec.get("jobLabel") else service["metadata"]["name"])
            problems += [f"{where}: its targets' job {job!r} does not match {pattern!r}"
                         for pattern in job_patterns if not re.fullmatch(pattern, job)]
            for endpoint in spec.get("endpoints", []):
                problems += [f"{where}, Service {service['metadata']['name']}: {problem}"
                             for problem in _endpoint_problems(endpoint, service, workloads)]
    return problems


def _endpoint_problems(endpoint: Doc, service: Doc, workloads: list[Doc]) -> list[str]:
    if endpoint.get("path", "/metrics") != "/metrics":
        return [f"endpoint path {endpoint['path']} is not /metrics"]
    ports = {port.get("name"): port for port in service["spec"].get("ports", [])}
    if endpoint.get("port") not in ports:
        return [f"no port named {endpoint.get('port')!r} (it has {sorted(map(str, ports))})"]
    target = ports[endpoint["port"]].get("targetPort", ports[endpoint["port"]]["port"])
    pods = [w for w in workloads if _namespace(w) == _namespace(service)
            and _selects({"matchLabels": service["spec"].get("selector", {})},
                         w["spec"]["template"]["metadata"].get("labels", {}))]
    if not pods:
        return ["selects no pods"]
    problems = []
    for workload in pods:
        found = [(container, port) for container in workload["spec"]["template"]["spec"]["containers"]
                 for port in container.get("ports", [])
                 if port.get("name") == target or port["containerPort"] == target]
        if not found:
            problems.append(f"targetPort {target!r} is no container port of {workload['kind']} "
                            f"{workload['metadata']['name']}")
        for container, port in found:
            args = container.get("args", [])
            served = _metrics_port(args)
            if served != port["containerPort"]:
                problems.append(f"targetPort {target!r} is container port {port['containerPort']}"
                                f", but the reconciler serves /metrics on {served}")
            problems += _security_problems(endpoint, workload, container)
    return problems


def _flag(args: list[str], name: str) -> str | None:
    """The value of `--name=value` or `--name value` in args (the last one wins)."""
    value = None
    for index, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and index + 1 < len(args) and not args[index + 1].startswith("--"):
            value = args[index + 1]
        elif arg == f"--{name}":
            value = "true"
    return value


def _secure(args: list[str]) -> bool:
    return (_flag(args, "metrics-secure") or "true").lower() not in ("false", "f", "0")


def _metrics_port(args: list[str]) -> int | None:
    address = _flag(args, "metrics-bind-address") or DEFAULT_METRICS_ADDRESS[_secure(args)]
    port = address.rpartition(":")[2]
    return int(port) if address not in ("0", "") and port.isdigit() else None


def _security_problems(endpoint: Doc, workload: Doc, container: Doc) -> list[str]:
    """Whether the endpoint scrapes /metrics the way the container serves it."""
    args = container.get("args", [])
    scheme = endpoint.get("scheme", "http")
    if not _secure(args):
        return [] if scheme == "http" else [f"scheme {scheme}, but /metrics is plain HTTP"]
    if scheme != "https":
        return [f"scheme {scheme}, but /metrics is served over HTTPS"]
    problems = []
    if not (endpoint.get("bearerTokenFile") or endpoint.get("authorization")
            or endpoint.get("bearerTokenSecret")):
        problems.append("no bearer token: /metrics answers 401 without one")
    tls = endpoint.get("tlsConfig") or {}
    ca_secret = ((tls.get("ca") or {}).get("secret") or {}).get("name")
    mounted = _mounted_certificate_secret(workload, container)
    if tls.get("insecureSkipVerify"):
        return problems
    if ca_secret is None:
        problems.append("tlsConfig neither skips verification nor names a CA: the "
                        "reconciler's certificate cannot be verified")
    elif ca_secret != mounted:
        problems.append(f"tlsConfig's CA is from Secret {ca_secret!r}, but the reconciler's "
                        f"certificate is {'self-signed' if mounted is None else repr(mounted)}")
    return problems


def _mounted_certificate_secret(workload: Doc, container: Doc) -> str | None:
    """The Secret whose volume is mounted at the container's --metrics-cert-path, if any."""
    path = _flag(container.get("args", []), "metrics-cert-path")
    mounts = {m["name"] for m in container.get("volumeMounts", [])
              if path is not None and m["mountPath"].rstrip("/") == path.rstrip("/")}
    for volume in workload["spec"]["template"]["spec"].get("volumes", []):
        if volume["name"] in mounts and "secret" in volume:
            return str(volume["secret"]["secretName"])
    return None


def scrape_config(endpoint: Doc, job: str, target: str, labels: dict[str, str],
                  token_file: str | None = None, ca_file: str | None = None) -> dict[str, Any]:
    """The Prometheus scrape configuration the Prometheus operator makes of a ServiceMonitor
    endpoint, for one target: the token read from `token_file` (the endpoint's bearerTokenFile
    is a path in the Prometheus pod) and the CA from `ca_file` (its secret, as the operator
    mounts it)."""
    config: dict[str, Any] = {
        "job_name": job, "metrics_path": endpoint.get("path", "/metrics"),
        "scheme": endpoint.get("scheme", "http"),
        "static_configs": [{"targets": [target], "labels": labels}]}
    if endpoint.get("bearerTokenFile"):
        config["authorization"] = {"type": "Bearer", "credentials_file": token_file}
    tls = endpoint.get("tlsConfig")
    if tls:
        config["tls_config"] = {"insecure_skip_verify": bool(tls.get("insecureSkipVerify"))}
        if tls.get("serverName"):
            config["tls_config"]["server_name"] = tls["serverName"]
        if tls.get("ca"):
            config["tls_config"]["ca_file"] = ca_file
    return config


def _namespace(document: Doc) -> str | None:
    return document["metadata"].get("namespace")  # None: the one it is installed into


def _namespace_selected(selector: Doc | None, own: str | None, namespace: str | None) -> bool:
    """The Prometheus operator's rule: any, matchNames, or else the monitor's own namespace."""
    if selector and selector.get("any"):
        return True
    if selector and selector.get("matchNames"):
        return namespace in selector["matchNames"]
    return namespace == own


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions); empty selects everything."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if not {"In": key in labels and labels[key] in values,
                "NotIn": key not in labels or labels[key] not in values,
                "Exists": key in labels, "DoesNotExist": key not in labels}[operator]:
            return False
    return True
