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

import attrs

from .cached import CachedNimbusPolicy
from .kube import EVENTS, ApiError, KubeClient
from .metrics import Metrics
from .problems import Problem

log = logging.getLogger(__name__)
COMPONENT = "nimbus-kubearmor"


MAX_MESSAGE = 1024  # what `kubectl describe` and the events.k8s.io API keep of a note
# A NimbusPolicy with hundreds of bad rules gets this many Events per generation, the last one
# saying how many more there are; the log and the metric count every problem reported (at most
# limits.MAX_PROBLEMS and one counting the rest).
MAX_EVENTS = 10


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


def event_name(nimbus_policy: CachedNimbusPolicy, problem: Problem) -> str:
    identity = "\0".join((nimbus_policy.uid, str(nimbus_policy.generation), problem.kind.value,
                          problem.field, problem.identity))
    return f"{nimbus_policy.name[:200]}.{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


class ProblemReporter:
    """Posts Events; remembers nothing itself (the caller passes and keeps what was reported)."""

    def __init__(self, client: KubeClient | None, metrics: Metrics, dry_run: bool = False) -> None:
        self.client = client
        self.metrics = metrics
        self.dry_run = dry_run
        self.instance = socket.gethostname()

    async def report(self, nimbus_policy: CachedNimbusPolicy, problems: Sequence[Problem],
                     reported: set[str]) -> None:
        """Report the problems whose Event names are not in `reported`, adding each to it as it
        is reported. Raises ApiError if an Event could not be posted (the reconcile is retried;
        what was reported before stays in `reported`)."""
        names = [event_name(nimbus_policy, problem) for problem in problems]
        if all(name in reported for name in names):
            return
        if self.client is not None and not self.dry_run and not reported:
            reported |= await self._posted(nimbus_policy)  # by this process before a restart
        # Events of this generation's problems (those of earlier generations do not count)
        posted = len(reported.intersection(names))
        for index, (problem, name) in enumerate(zip(problems, names, strict=True)):
            if name in reported:
                continue
            log.warning(str(problem), extra={
                "nimbuspolicy": nimbus_policy.key, "generation": nimbus_policy.generation,
                "problem": problem.kind.value, "field": problem.field,
                "rule_index": problem.rule_index, "rule_id": problem.rule_id})
            self.metrics.problems.labels(problem.kind.value).inc()
            if self.client is not None and not self.dry_run and posted < MAX_EVENTS:
                more = len(problems) - index - 1
                if posted == MAX_EVENTS - 1 and more:
                    problem = attrs.evolve(problem, message=f"{problem.message} (and {more} more "
                                           "problems in this NimbusPolicy; the reconciler's log "
                                           "lists them)")
                await self._post(nimbus_policy, problem, name)
                posted += 1
            reported.add(name)

    async def _posted(self, nimbus_policy: CachedNimbusPolicy) -> set[str]:
        assert self.client is not None
        events = await self.client.list(EVENTS, nimbus_policy.namespace,
                                        field_selector=f"involvedObject.uid={nimbus_policy.uid}")
        return {e["metadata"]["name"] for e in events.get("items") or []}

    async def _post(self, nimbus_policy: CachedNimbusPolicy, problem: Problem, name: str) -> None:
        assert self.client is not None
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": nimbus_policy.namespace},
            "involvedObject": {"apiVersion": nimbus_policy.api_version, "kind": "NimbusPolicy",
                               "name": nimbus_policy.name, "namespace": nimbus_policy.namespace,
                               "uid": nimbus_policy.uid,
                               "resourceVersion": nimbus_policy.resource_version},
            "reason": problem.kind.value, "message": _clip(f"{problem.field}: {problem.message}"),
            "type": "Warning", "count": 1, "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT, "reportingInstance": self.instance,
        }
        try:
            await self.client.create(EVENTS, nimbus_policy.namespace, event, COMPONENT)
        except ApiError as error:
            if not error.already_exists:
                raise
