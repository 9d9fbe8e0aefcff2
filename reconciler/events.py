"""Bad input made visible: a Warning Event on the NimbusPolicy, a structured log line and a
metric, once per problem per NimbusPolicy generation.

The NimbusPolicy CRD has no conditions (its schema would prune them), so Events are where
`kubectl describe nimbuspolicy` shows what is wrong. Event names are derived from the
NimbusPolicy's uid, generation and the problem, and this process reads which exist before
posting, so a restart neither duplicates Events nor makes a single write for problems it
already reported.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import socket
from collections.abc import Sequence
from typing import Any

import attrs

from .kube import EVENTS, ApiError, KubeClient
from .metrics import Metrics
from .problems import Problem

log = logging.getLogger(__name__)
COMPONENT = "nimbus-kubearmor"


MAX_MESSAGE = 1024  # what `kubectl describe` and the events.k8s.io API keep of a note
# A NimbusPolicy with hundreds of bad rules gets this many Events per generation, the last one
# saying how many more there are; the log and the metric still count every problem.
MAX_EVENTS = 10


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


def event_name(nimbus_policy: dict[str, Any], problem: Problem) -> str:
    metadata = nimbus_policy["metadata"]
    identity = "\0".join((metadata["uid"], str(metadata.get("generation", 0)), problem.kind.value,
                          problem.field, problem.message))
    return f"{metadata['name'][:200]}.{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


class ProblemReporter:
    def __init__(self, client: KubeClient | None, metrics: Metrics, dry_run: bool = False) -> None:
        self.client = client
        self.metrics = metrics
        self.dry_run = dry_run
        self.instance = socket.gethostname()
        # NimbusPolicy key -> (uid, generation) whose problems are reported
        self._reported: dict[str, tuple[str, int]] = {}

    def forget(self, key: str) -> None:
        self._reported.pop(key, None)

    async def report(self, nimbus_policy: dict[str, Any], problems: Sequence[Problem]) -> None:
        """Raises ApiError if an Event could not be posted (the reconcile is retried)."""
        metadata = nimbus_policy["metadata"]
        key = f"{metadata['namespace']}/{metadata['name']}"
        version = (metadata["uid"], int(metadata.get("generation", 0)))
        if not problems or self._reported.get(key) == version:
            return
        posted = set() if self.client is None or self.dry_run else await self._posted(metadata)
        for index, problem in enumerate(problems):
            name = event_name(nimbus_policy, problem)
            if name in posted:
                continue  # reported before this process started
            log.warning(str(problem), extra={
                "nimbuspolicy": key, "generation": version[1], "problem": problem.kind.value,
                "field": problem.field, "rule_index": problem.rule_index,
                "rule_id": problem.rule_id})
            self.metrics.problems.labels(problem.kind.value).inc()
            if self.client is None or self.dry_run or index >= MAX_EVENTS:
                continue
            if index == MAX_EVENTS - 1 and len(problems) > MAX_EVENTS:
                problem = attrs.evolve(problem, message=f"{problem.message} (and "
                                       f"{len(problems) - MAX_EVENTS} more problems in this "
                                       "NimbusPolicy; the reconciler's log lists them all)")
            await self._post(nimbus_policy, problem, name)
        self._reported[key] = version

    async def _posted(self, metadata: dict[str, Any]) -> set[str]:
        assert self.client is not None
        events = await self.client.list(EVENTS, metadata["namespace"],
                                        field_selector=f"involvedObject.uid={metadata['uid']}")
        return {e["metadata"]["name"] for e in events.get("items") or []}

    async def _post(self, nimbus_policy: dict[str, Any], problem: Problem, name: str) -> None:
        assert self.client is not None
        metadata = nimbus_policy["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": metadata["namespace"]},
            "involvedObject": {"apiVersion": nimbus_policy.get("apiVersion"),
                               "kind": "NimbusPolicy", "name": metadata["name"],
                               "namespace": metadata["namespace"], "uid": metadata["uid"],
                               "resourceVersion": metadata.get("resourceVersion")},
            "reason": problem.kind.value, "message": _clip(f"{problem.field}: {problem.message}"),
            "type": "Warning", "count": 1, "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT, "reportingInstance": self.instance,
        }
        try:
            await self.client.create(EVENTS, metadata["namespace"], event, COMPONENT)
        except ApiError as error:
            if not error.already_exists:
                raise
