"""`python -m reconciler --once [--dry-run] [-o json]`: connect, list everything, reconcile every
NimbusPolicy once, print what was done (with --dry-run: what would be, as a diff) and exit with a
status scripts can rely on (exitcode.py). Every way it can end, a failure or a signal included,
ends with the summary (summary.py), never a traceback.

In this order:
  1. connect: read the kubeconfig and ask the API server its version (kr8s). Before anything of
     the reconciler is loaded: a wrong kubeconfig or an unreachable server is reported as soon
     as kr8s alone can.
  2. list NimbusPolicies and KubeArmorPolicies into the controller's caches. A dry run also
     keeps each object as listed (its JSON text, without managedFields), to diff against.
  3. reconcile every NimbusPolicy once, `workers` at a time.

SIGINT or SIGTERM while connecting or listing stops at once (nothing was written yet); while
reconciling, no further NimbusPolicy is started and the ones under way get `grace` seconds to
finish (a second signal cuts them short), so the summary says what was written. One that came
before the run listened (while loading) stops it as it starts; one after (while the summary is
written) changes nothing, a second ends the process at once (heldsignals.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import attrs

from . import summary
from .app import connect
from .heldsignals import HeldSignals
from .kube import ApiError, KubeClient, Resource, api_error
from .objdiff import PatchError, file_name, merged, unified_diff
from .progress import Progress, listing_line, reconciled_line

if TYPE_CHECKING:
    from .controller import Controller, Outcome, Write

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 30.0
# A request the API server asks to send again later (a 429 with Retry-After, say) is, this many
# times (client-go's REST client: 10): there is no work queue here to retry it later.
THROTTLED_RETRIES = 10


@attrs.frozen
class OnceOptions:
    kubeconfig: str | None = None
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    workers: int = 4
    dry_run: bool = False
    output: str = "text"  # or "json"
    grace: float = 4.0  # after SIGINT/SIGTERM, reconciles under way get this long to finish


def describe(error: BaseException) -> str:
    """An exception as one line for the summary: the API's Status, else its type and text."""
    converted = api_error(error)
    if converted is not None:
        return str(converted)
    text = " ".join(str(error).split())[:300]  # a YAML error's lines, say
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class OneShot:
    def __init__(self, options: OnceOptions, progress: Progress,
                 held: HeldSignals | None = None) -> None:
        self.options = options
        self.progress = progress
        # Signals that come while the run does not listen (before it starts, after it ends)
        self.held = held or HeldSignals()
        self.phase = "connecting"  # then "listing", "reconciling", "done"
        self.controller: Controller | None = None
        self.outcomes: list[Outcome] = []
        self.listed: int | None = None
        self.error: str | None = None  # why it could not run
        self.interrupted: str | None = None
        self.cancelled: list[str] = []
        # Dry run: every object as listed, by (plural, "namespace/name"), as JSON text
        self.live: dict[tuple[str, str], str] = {}
        self._stopping = False  # a signal came: no further NimbusPolicy is started
        self._scope: anyio.CancelScope | None = None  # around connecting, listing, reconciling
        self._reconciling_since = 0.0

    async def run(self) -> summary.Report:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            self.interrupted = self.held.first  # one came while loading: stop as it starts
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._on_signals, signals)
                if self.progress.enabled:
                    tasks.start_soon(self._draw_progress)
                with anyio.CancelScope() as self._scope:
                    if self.interrupted is None:
                        await self._sync_or_say_why()
                tasks.cancel_scope.cancel()
            # still receiving signals (and ignoring them): the report is not cut short
            self.progress.clear()
            self.outcomes.sort(key=lambda o: o.key)
            report = summary.Report(
                dry_run=self.options.dry_run, outcomes=tuple(self.outcomes), listed=self.listed,
                error=self.error, interrupted=self.interrupted,
                cancelled=tuple(sorted(self.cancelled)),
                diffs=tuple(self._diffs()) if self.options.dry_run else ())
        # The receiver gave them back to Python's defaults: held while the summary is written
        self.held.finishing()
        return report

    async def _sync_or_say_why(self) -> None:
        """_sync, and a failure it did not foresee (a bug, or an OS error) said in the summary
        as why it could not run, its traceback in the log at debug."""
        try:
            await self._sync()
        except Exception as error:
            log.error("could not run", exc_info=log.isEnabledFor(logging.DEBUG),
                      extra={"error": repr(error)})
            self.error = describe(error)

    async def _sync(self) -> None:
        client = await self._connect()
        if client is None:
            return
        # Loaded once connected (see the module's docstring).
        from prometheus_client import CollectorRegistry

        from .controller import Controller, ControllerConfig
        from .metrics import Metrics

        config = ControllerConfig(namespaces=self.options.namespaces, workers=self.options.workers,
                                  dry_run=self.options.dry_run)
        self.controller = controller = Controller(client, Metrics(CollectorRegistry()), config)
        if self.options.dry_run:
            for reflector in controller.reflectors:
                reflector.transform = self._keeping_live(reflector.resource, reflector.transform)
        self.phase = "listing"
        for reflector in controller.reflectors:
            try:
                await reflector.list_once()
            except Exception as error:
                self.error = f"could not list {reflector.resource.plural} in {reflector.scope}: " \
                    f"{describe(error)}{_not_served(reflector.resource, error)}"
                return
        keys = sorted(controller.nimbus_policies.list_keys())
        self.listed = len(keys)
        self.phase = "reconciling"
        self._reconciling_since = time.monotonic()
        pending = iter(keys)

        async def worker() -> None:
            for key in pending:  # shared by the workers: each key is taken once
                if self._stopping:
                    return
                try:
                    self.outcomes.append(await self._reconcile(controller, key))
                except anyio.get_cancelled_exc_class():
                    self.cancelled.append(key)
                    raise

        async with anyio.create_task_group() as workers:
            for _ in range(min(self.options.workers, len(keys))):
                workers.start_soon(worker)
        self.phase = "done"

    async def _connect(self) -> KubeClient | None:
        for path in (self.options.kubeconfig or "").split(":"):
            try:
                found = not path or await (await anyio.Path(path).expanduser()).is_file()
            except OSError as error:  # a name too long, a directory we may not search
                found, self.error = False, f"kubeconfig {path}: {error.strerror or error}"
            if not found:
                self.error = self.error or f"kubeconfig {path}: no such file"
                return None
        try:
            with anyio.fail_after(CONNECT_TIMEOUT):
                return await connect(self.options.kubeconfig,
                                     throttled_retries=THROTTLED_RETRIES)
        except Exception as error:
            log.debug("could not connect", exc_info=True)
            where = self.options.kubeconfig or "$KUBECONFIG, in-cluster or ~/.kube/config"
            refused = api_error(error)
            if refused is not None and refused.status in (401, 403):
                self.error = f"the API server refused the credentials ({where}): {refused}"
            elif refused is not None or isinstance(error, TimeoutError):
                self.error = f"cannot reach the API server: {describe(error)}"
            else:  # reading the kubeconfig or the service account failed
                self.error = f"cannot load credentials ({where}): {describe(error)}"
            return None

    async def _reconcile(self, controller: Controller, key: str) -> Outcome:
        from .controller import Outcome  # loaded by now

        try:
            return await controller.reconcile(key)
        except Exception as error:  # a bug: reported with the others, the rest goes on
            log.error("reconcile crashed", exc_info=log.isEnabledFor(logging.DEBUG),
                      extra={"nimbuspolicy": key, "error": repr(error)})
            return Outcome(key, errors=[api_error(error) or ApiError(0, "Crash", repr(error))])

    def _keeping_live(self, resource: Resource, transform: Any) -> Any:
        """The reflector's transform, also keeping the object as listed (a dry run's diff
        needs the whole object; the caches keep only what a reconcile reads)."""
        def keeping(obj: dict[str, Any]) -> Any:
            value = transform(obj)
            obj.setdefault("kind", resource.kind)  # list items carry none
            metadata = obj.get("metadata") or {}
            metadata.pop("managedFields", None)
            self.live[(resource.plural, value.key)] = json.dumps(obj, separators=(",", ":"))
            return value
        return keeping

    def _diffs(self) -> list[summary.ObjectDiff]:
        return [self._diff(write) for outcome in self.outcomes for write in outcome.would_write]

    def _diff(self, write: Write) -> summary.ObjectDiff:
        raw = self.live.get((write.resource.plural, f"{write.namespace}/{write.name}"))
        live = json.loads(raw) if raw is not None else None
        label = file_name(write.resource.api_version, write.resource.kind, write.namespace,
                          write.name)
        error = None
        try:
            after = merged(write.verb, live, write.body, write.content_type)
            text = unified_diff(label, live, after)
        except PatchError as failure:
            text, error = "", str(failure)
        return summary.ObjectDiff(write.verb, write.resource.api_version, write.resource.kind,
                                  write.namespace, write.name, write.subresource, text, error)

    async def _on_signals(self, signals: Any) -> None:
        async for signum in signals:
            self.interrupted = signal.Signals(signum).name
            self._stopping = True
            assert self._scope is not None
            if self.phase != "reconciling":
                self._scope.cancel()  # connecting or listing: nothing is being written
                return
            log.info("stopping: the reconciles under way get a grace period to finish",
                     extra={"signal": self.interrupted, "grace_s": self.options.grace})
            with anyio.move_on_after(self.options.grace):
                async for _ in signals:
                    break  # a second signal: at once
            self._scope.cancel()
            return

    async def _draw_progress(self) -> None:
        while True:
            controller = self.controller
            if self.phase == "listing" and controller is not None:
                self.progress.show(listing_line(len(controller.nimbus_policies),
                                                len(controller.kubearmor_policies)))
            elif self.phase == "reconciling" and self.listed:
                self.progress.show(reconciled_line(len(self.outcomes), self.listed,
                                                   time.monotonic() - self._reconciling_since))
            await anyio.sleep(0.2)


def _not_served(resource: Resource, error: BaseException) -> str:
    """What a 404 to a LIST means: the API server does not serve the resource at all (a LIST of
    a namespace that does not exist is empty, not 404), as when its CRD is not installed."""
    answer = api_error(error)
    if answer is None or not answer.not_found:
        return ""
    return (f" (is the {resource.kind} CRD, {resource.plural}.{resource.group} "
            f"{resource.version}, installed?)")


def main(options: OnceOptions, held: HeldSignals | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run it, print the summary on `out` (stdout), return the exit status. `held`: SIGINT
    and SIGTERM as kept since the process knew it runs --once (a new hold if None)."""
    if held is None:
        held = HeldSignals()
        held.hold()
    # Started with stdout or stderr closed (`>&-`), Python has None for them: the summary goes
    # nowhere, as to a reader gone, and the exit status says what it would have.
    out = out or sys.stdout or open(os.devnull, "w")  # noqa: SIM115 (open until the exit)
    progress = Progress(err or sys.stderr or open(os.devnull, "w"))  # noqa: SIM115
    handlers = logging.getLogger().handlers
    clear_first = progress.log_filter()
    for handler in handlers:
        handler.addFilter(clear_first)
    try:
        report = anyio.run(OneShot(options, progress, held).run)
    finally:
        for handler in handlers:
            handler.removeFilter(clear_first)
    code = summary.write(report, options.output, out)
    held.ignore()
    return code
