"""Does a ServiceMonitor scrape the reconciler? Checked on rendered manifests (kustomize's, or a
Helm chart's `helm template`): the monitor selects the metrics Service by its labels, in a
namespace it looks in; the endpoint's port name is one of that Service's ports; the port's
targetPort is a container port of the pods the Service selects, the one the reconciler serves
/metrics on; and the job Prometheus will give the targets is the one the alerts and dashboards
select."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

Doc = dict[str, Any]
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
DEFAULT_METRICS_ADDRESS = ":8080"  # the reconciler's --metrics-bind-address default


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
            served = _metrics_port(container.get("args", []))
            if served != port["containerPort"]:
                problems.append(f"targetPort {target!r} is container port {port['containerPort']}"
                                f", but the reconciler serves /metrics on {served}")
    return problems


def _metrics_port(args: list[str]) -> int | None:
    address = DEFAULT_METRICS_ADDRESS
    for index, arg in enumerate(args):
        if arg.startswith("--metrics-bind-address="):
            address = arg.split("=", 1)[1]
        elif arg == "--metrics-bind-address" and index + 1 < len(args):
            address = args[index + 1]
    port = address.rpartition(":")[2]
    return int(port) if address not in ("0", "") and port.isdigit() else None


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
