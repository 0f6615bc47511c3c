"""Workflow definitions: a named DAG of steps, written as code.

    ORDER = define_workflow(
        "order",
        input_model=OrderRequest,
        steps=[
            task("validate"),
            task("persist", after=["validate"]),
            ...
        ],
    )

A step runs once all the steps it comes `after` have completed (or been skipped); steps whose
dependencies are met together are dispatched together. A step with a condition (`when=`) runs
only if it holds, else it is skipped, and so is a step all of whose dependencies were skipped.
A `task` runs in a step service; a `wait` is held by the orchestrator until a reply with the
right correlation id arrives, or its timeout passes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, ClassVar, Final

from pydantic import BaseModel

from relayflow.errors import DefinitionError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed task is tried again. Attempt n (n ≥ 2) starts after
    `initial_interval * backoff_coefficient ** (n - 2)`, capped at `max_interval`, spread by
    ±`jitter` (a fraction) so that a burst of failures does not retry in lockstep. An error whose
    type is in `non_retryable_errors`, or that the step marked non-retryable, is not retried."""

    max_attempts: int = 5
    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = 2.0
    max_interval: timedelta = timedelta(seconds=30)
    jitter: float = 0.2
    non_retryable_errors: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise DefinitionError("max_attempts must be at least 1")
        if self.initial_interval < timedelta(0) or self.max_interval < self.initial_interval:
            raise DefinitionError("need 0 <= initial_interval <= max_interval")
        if self.backoff_coefficient < 1:
            raise DefinitionError("backoff_coefficient must be at least 1")
        if not 0 <= self.jitter < 1:
            raise DefinitionError("jitter is a fraction in [0, 1)")

    def retries(self, error_type: str, retryable: bool, attempts_made: int) -> bool:
        return (
            retryable
            and error_type not in self.non_retryable_errors
            and attempts_made < self.max_attempts
        )

    def delay(self, attempts_made: int, spread: float) -> timedelta:
        """The wait before the next attempt; `spread` in [-1, 1] picks a point in the jitter."""
        base = self.initial_interval * self.backoff_coefficient ** max(attempts_made - 1, 0)
        capped = min(base, self.max_interval)
        return capped * (1 + self.jitter * spread)


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True, slots=True)
class Given:
    """What a step's condition sees: the workflow's input and its ancestors' outputs (a skipped
    ancestor's output is None). Reading a step that is not an ancestor raises, which fails the
    step with that error."""

    input: Mapping[str, Any]
    outputs: Mapping[str, Any]

    def output(self, step: str) -> Any:
        if step not in self.outputs:
            raise KeyError(f"{step!r} is not a step this one comes after")
        return self.outputs[step]


# Evaluated by the orchestrator when the step's dependencies have ended: True runs the step,
# False skips it. It must be a pure function of what it is given (it may run again on replay).
Condition = Callable[[Given], bool]


# Where a map's list, a sleep's wake-up time or a wait's correlation id is read from:
# "input.<field>[.<field>…]" (the workflow's input) or "<step>.<field>[.<field>…]".
INPUT_SOURCE = "input"


def split_reference(reference: str) -> tuple[str, tuple[str, ...]]:
    """A reference as (source, path): ("input" or a step name, the fields under it)."""
    source, _, path = reference.partition(".")
    return source, tuple(path.split(".")) if path else ()


def _check_reference(
    workflow: str,
    what: str,
    reference: str,
    ancestors: frozenset[str],
    *,
    from_input: bool,
) -> None:
    """Refuse a reference that does not name a field of an ancestor's output (or, when
    `from_input`, of the input): `what` says which step reads it, and for what."""
    source, path = split_reference(reference)
    known = source in ancestors or (from_input and source == INPUT_SOURCE)
    if not path or not known:
        allowed = "'input.<field>' or '<step>.<field>'" if from_input else "'<step>.<field>'"
        raise DefinitionError(
            f"workflow {workflow!r}: {what} {reference!r}, which must be {allowed} of a step "
            "it comes after"
        )


@dataclass(frozen=True, slots=True)
class StepSpec:
    """What every step has, whatever its kind. Each kind is a subclass (`TaskSpec`, `WaitSpec`,
    …) with its own options and its own load-time checks; the orchestrator runs it through the
    kind's handler (`relayflow/machine/kinds/`), found by `kind`."""

    kind: ClassVar[str]
    name: str
    after: tuple[str, ...] = ()
    # Tasks: start-to-close timeout of one attempt (a step that never reports back is retried or
    # failed). Waits: how long to wait for the reply.
    timeout: timedelta | None = None
    # None takes the workflow's policy; kinds that do not retry ignore it.
    retry: RetryPolicy | None = None
    # Runs the step only when true; None always runs it (see `Condition`).
    when: Condition | None = None

    def check(self, workflow: str, ancestors: frozenset[str]) -> None:
        """Refuse, at definition time, what the kind cannot run (`ancestors`: the steps that
        certainly complete before this one starts)."""

    def queues(self) -> tuple[str, ...]:
        """The step bodies this step sends commands to, each on its own queue."""
        return ()


_BODY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True, slots=True)
class TaskSpec(StepSpec):
    """Runs a step body in a step service: one StepCommand per attempt, one StepResult back.
    The body is the step's own name unless `step` names another (one body may serve several
    steps, in one workflow or many; each keeps its own invocations and outputs)."""

    kind: ClassVar[str] = "task"
    step: str = ""
    # The body that undoes this step, run when the workflow fails or is cancelled after this
    # step completed ("" for a step nothing needs to undo).
    compensate: str = ""

    @property
    def body(self) -> str:
        return self.step or self.name

    def queues(self) -> tuple[str, ...]:
        return (self.body, self.compensate) if self.compensate else (self.body,)


# A local task's attempt is cut off after this long when it declares no timeout: it holds the
# orchestrator's batch (and the locks of its workflows) while it runs.
LOCAL_TIMEOUT = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class LocalTaskSpec(TaskSpec):
    """A task whose body runs inside the orchestrator, in the transaction that records its
    result (Temporal's local activities are the anchor): no broker hop and no second commit.
    Its database writes (a `transactional=True` body) commit with the workflow's state or not
    at all; an attempt that fails rolls them back, and its publishes, which go out through the
    orchestrator's outbox, are dropped with it. For light work — validation, mapping, a lookup:
    while it runs, the orchestrator's batch waits. Its undo (`compensate`) runs in a step
    service like any other."""

    kind: ClassVar[str] = "local"

    @property
    def limit(self) -> timedelta:
        """How long one attempt may run."""
        return self.timeout or LOCAL_TIMEOUT

    def queues(self) -> tuple[str, ...]:
        return (self.compensate,) if self.compensate else ()


@dataclass(frozen=True, slots=True)
class WaitSpec(StepSpec):
    """Held by the orchestrator until a reply with the right correlation id arrives, or its
    timeout passes."""

    kind: ClassVar[str] = "wait"
    # Where the correlation id comes from: "<step>.<field>[.<field>…]" of an ancestor's output.
    correlation_from: str = ""

    def check(self, workflow: str, ancestors: frozenset[str]) -> None:
        _check_reference(
            workflow,
            f"wait {self.name!r} takes its correlation id from",
            self.correlation_from,
            ancestors,
            from_input=False,
        )


# What a child step hands its child workflow as input, computed from the parent's input and the
# step's ancestors' outputs (pure, like a condition).
ChildInput = Callable[[Given], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ChildSpec(StepSpec):
    """Starts another registered workflow and completes with its output, or fails with its
    error (the retry policy may then start a fresh child)."""

    kind: ClassVar[str] = "child"
    workflow: str = ""
    # None hands the child the parent's own input.
    input: ChildInput | None = None


# A map item's stepKey, from the item (pure, like a condition); None numbers items 0, 1, 2, ….
ItemKey = Callable[[Any], str]


@dataclass(frozen=True, slots=True)
class MapSpec(StepSpec):
    """Runs its step body once per item of a list, as invocations keyed by the item's index
    (or `key(item)`), at most `max_concurrency` at a time, each with the step's retry policy
    and `timeout`; completes with the item outputs in item order. Fails at the first item that
    fails for good, unless `tolerate_failures` (a count) or `tolerate_ratio` (a fraction of the
    items) allows more; a failed item's place in the output is then None."""

    kind: ClassVar[str] = "map"
    step: str = ""
    over: str = ""
    max_concurrency: int = 10
    max_items: int = 10_000
    key: ItemKey | None = None
    tolerate_failures: int = 0
    tolerate_ratio: float = 0.0

    @property
    def body(self) -> str:
        return self.step or self.name

    def tolerated(self, total: int) -> int:
        """How many items may fail for good without failing the step."""
        return max(self.tolerate_failures, int(self.tolerate_ratio * total))

    def queues(self) -> tuple[str, ...]:
        return (self.body,)

    def check(self, workflow: str, ancestors: frozenset[str]) -> None:
        _check_reference(
            workflow, f"map {self.name!r} is over", self.over, ancestors, from_input=True
        )


# The longest a sleep may be declared for: longer is a mistake (a unit, a zero too many).
MAX_SLEEP = timedelta(days=366)


@dataclass(frozen=True, slots=True)
class SleepSpec(StepSpec):
    """Completes once a durable timer fires: `duration` after the step starts, or at the time
    (ISO 8601 with a zone) found at `until` — "input.<field>" or "<step>.<field>" of a step it
    comes after. A time already past completes it at once."""

    kind: ClassVar[str] = "sleep"
    duration: timedelta | None = None
    until: str = ""

    def check(self, workflow: str, ancestors: frozenset[str]) -> None:
        if self.until:
            _check_reference(
                workflow,
                f"sleep {self.name!r} sleeps until",
                self.until,
                ancestors,
                from_input=True,
            )


def sleep(
    name: str,
    *,
    duration: timedelta | None = None,
    until: str | None = None,
    after: Iterable[str] = (),
    when: Condition | None = None,
) -> SleepSpec:
    """A durable sleep: for `duration`, or until the time at `until` (see `SleepSpec`)."""
    if (duration is None) == (until is None):
        raise DefinitionError(f"sleep {name!r}: give either duration= or until=")
    if duration is not None and not timedelta(0) < duration <= MAX_SLEEP:
        raise DefinitionError(
            f"sleep {name!r}: duration must be positive and at most {MAX_SLEEP.days} days, "
            f"got {duration}"
        )
    return SleepSpec(name=name, after=tuple(after), when=when, duration=duration, until=until or "")


def task(
    name: str,
    *,
    step: str | None = None,
    after: Iterable[str] = (),
    retry: RetryPolicy | None = None,
    timeout: timedelta | None = None,
    when: Condition | None = None,
    compensate: str | None = None,
    local: bool = False,
) -> TaskSpec:
    """A step that runs body `step` (by default the body named `name`) in a step service, or
    with `local=True` inside the orchestrator (see `LocalTaskSpec`); `compensate` names the
    body that undoes it (see `TaskSpec`)."""
    if timeout is not None and timeout <= timedelta(0):
        raise DefinitionError(f"step {name!r}: timeout must be positive")
    if compensate is not None and not _BODY_NAME.match(compensate):
        raise DefinitionError(f"step {name!r}: {compensate!r} is not a valid step body name")
    return (LocalTaskSpec if local else TaskSpec)(
        name=name,
        after=tuple(after),
        retry=retry,
        timeout=timeout,
        when=when,
        step=_body_name(name, step),
        compensate=compensate or "",
    )


def _body_name(name: str, step: str | None) -> str:
    if step is None or step == name:
        return ""
    if not _BODY_NAME.match(step):
        raise DefinitionError(f"step {name!r}: {step!r} is not a valid step body name")
    return step


# Whether a signal's payload is the one a signal wait waits for (pure, like a condition).
SignalFilter = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class SignalWaitSpec(StepSpec):
    """Held by the orchestrator until a signal named `signal` arrives whose payload `accept`
    takes (every one, when None), or its timeout passes; completes with the payload. Signals
    are taken in the order they arrived; one that came before the wait began is kept for it."""

    kind: ClassVar[str] = "signal_wait"
    signal: str = ""
    accept: SignalFilter | None = None


def wait(
    name: str,
    *,
    timeout: timedelta,
    correlation_from: str | None = None,
    signal: str | None = None,
    accept: SignalFilter | None = None,
    after: Iterable[str] = (),
    when: Condition | None = None,
) -> WaitSpec | SignalWaitSpec:
    """Wait for the reply whose correlation id is at `correlation_from`, or for the signal
    named `signal` (one the workflow declares), at most `timeout`."""
    if timeout <= timedelta(0):
        raise DefinitionError(f"step {name!r}: timeout must be positive")
    if (correlation_from is None) == (signal is None):
        raise DefinitionError(f"wait {name!r}: give either correlation_from= or signal=")
    if signal is not None:
        return SignalWaitSpec(
            name=name, after=tuple(after), timeout=timeout, when=when, signal=signal, accept=accept
        )
    if accept is not None:
        raise DefinitionError(f"wait {name!r}: accept= filters signals; this wait is for a reply")
    return WaitSpec(
        name=name,
        after=tuple(after),
        correlation_from=correlation_from or "",
        timeout=timeout,
        when=when,
    )


def child(
    name: str,
    *,
    workflow: str | WorkflowDefinition,
    input: ChildInput | None = None,
    after: Iterable[str] = (),
    retry: RetryPolicy | None = None,
    timeout: timedelta | None = None,
    when: Condition | None = None,
) -> ChildSpec:
    """A step that runs workflow `workflow` (a definition, or the name of one registered
    beside it) as its child. `timeout` bounds each child run; past it the child is cancelled
    and the attempt fails with StepTimeout."""
    if timeout is not None and timeout <= timedelta(0):
        raise DefinitionError(f"step {name!r}: timeout must be positive")
    return ChildSpec(
        name=name,
        after=tuple(after),
        retry=retry,
        timeout=timeout,
        when=when,
        workflow=workflow if isinstance(workflow, str) else workflow.name,
        input=input,
    )


def map_step(
    name: str,
    *,
    over: str,
    step: str | None = None,
    after: Iterable[str] = (),
    max_concurrency: int = 10,
    max_items: int = 10_000,
    key: ItemKey | None = None,
    tolerate_failures: int = 0,
    tolerate_ratio: float = 0.0,
    retry: RetryPolicy | None = None,
    timeout: timedelta | None = None,
    when: Condition | None = None,
) -> MapSpec:
    """A step that runs body `step` (by default the body named `name`) once per item of the
    list at `over` (see `MapSpec`); `timeout` bounds each item's attempt."""
    if timeout is not None and timeout <= timedelta(0):
        raise DefinitionError(f"step {name!r}: timeout must be positive")
    if max_concurrency < 1 or max_items < 1:
        raise DefinitionError(f"map {name!r}: max_concurrency and max_items must be at least 1")
    if tolerate_failures < 0 or not 0 <= tolerate_ratio <= 1:
        raise DefinitionError(
            f"map {name!r}: tolerate_failures must be >= 0 and tolerate_ratio in [0, 1]"
        )
    return MapSpec(
        name=name,
        after=tuple(after),
        retry=retry,
        timeout=timeout,
        when=when,
        over=over,
        step=_body_name(name, step),
        max_concurrency=max_concurrency,
        max_items=max_items,
        key=key,
        tolerate_failures=tolerate_failures,
        tolerate_ratio=tolerate_ratio,
    )


@dataclass(frozen=True, slots=True)
class WorkflowDefinition:
    name: str
    input_model: type[BaseModel]
    steps: Mapping[str, StepSpec]
    # Steps in a topological order (dependencies first); also the display order.
    order: tuple[str, ...]
    # The workflow's output is the output of this step, or of every sink step by name.
    output_from: str | None = None
    dependents: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Every step that completes before each step starts (its dependencies, theirs, …).
    ancestors: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # The retry policy of tasks that name none.
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # The whole run's limit: past it the workflow fails with WorkflowTimeout.
    timeout: timedelta | None = None
    # The signals it takes, by name, each with the model its payload must fit.
    signals: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    # What a run is pinned to: declared, or derived from the definition's shape (see
    # `define_workflow`). Runs finish on the version they started on.
    version: str = ""

    def retry_policy(self, step: str) -> RetryPolicy:
        return self.steps[step].retry or self.retry

    def sinks(self) -> list[str]:
        return [name for name in self.order if not self.dependents.get(name)]

    def task_names(self) -> list[str]:
        """The step bodies this workflow sends commands to: the step queues it needs."""
        return list(dict.fromkeys(q for name in self.order for q in self.steps[name].queues()))

    def local_bodies(self) -> list[str]:
        """The step bodies its local tasks run inside the orchestrator."""
        steps = (self.steps[name] for name in self.order)
        return list(dict.fromkeys(s.body for s in steps if isinstance(s, LocalTaskSpec)))


def define_workflow(
    name: str,
    *,
    input_model: type[BaseModel],
    steps: Sequence[StepSpec],
    output_from: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: timedelta | None = None,
    signals: Mapping[str, type[BaseModel]] | None = None,
    version: str | None = None,
) -> WorkflowDefinition:
    """Check the DAG once, at definition time, so a mistake fails at start-up, not mid-run.

    `version` pins runs: a run finishes on the definition it started on, and a deploy may load
    several versions of one workflow at once (new runs take the newest). Without one, the
    version is derived from the definition's shape — its steps, their kinds and options, the
    code of its conditions — so that a changed definition is a new version by itself."""
    if version is not None and not _VERSION.fullmatch(version):
        raise DefinitionError(
            f"workflow {name!r}: version {version!r} must be 1 to 64 of A-Z a-z 0-9 . _ -"
        )
    declared = _checked_signals(name, signals or {})
    by_name: dict[str, StepSpec] = {}
    for spec in steps:
        if spec.name in by_name:
            raise DefinitionError(f"workflow {name!r}: step {spec.name!r} is defined twice")
        by_name[spec.name] = spec
    if not by_name:
        raise DefinitionError(f"workflow {name!r} has no steps")
    dependents: dict[str, list[str]] = {step: [] for step in by_name}
    for spec in steps:
        for dep in spec.after:
            if dep not in by_name:
                raise DefinitionError(
                    f"workflow {name!r}: step {spec.name!r} comes after unknown step {dep!r}"
                )
            dependents[dep].append(spec.name)
    order = _topological_order(name, by_name)
    ancestors: dict[str, frozenset[str]] = {}
    for step in order:
        deps = by_name[step].after
        ancestors[step] = frozenset(deps).union(*(ancestors[dep] for dep in deps))
        by_name[step].check(name, ancestors[step])
        spec = by_name[step]
        if isinstance(spec, MapSpec) and split_reference(spec.over)[0] == INPUT_SOURCE:
            _check_list_field(name, spec, input_model)
        if isinstance(spec, SignalWaitSpec) and spec.signal not in declared:
            raise DefinitionError(
                f"workflow {name!r}: wait {spec.name!r} waits for signal {spec.signal!r}, which "
                f"the workflow does not declare (signals: {', '.join(sorted(declared)) or 'none'})"
            )
    if output_from is not None and output_from not in by_name:
        raise DefinitionError(f"workflow {name!r}: output_from names unknown step {output_from!r}")
    definition = WorkflowDefinition(
        name=name,
        input_model=input_model,
        steps=by_name,
        order=order,
        output_from=output_from,
        dependents={step: tuple(names) for step, names in dependents.items()},
        ancestors=ancestors,
        retry=retry or RetryPolicy(),
        timeout=timeout,
        signals=declared,
    )
    return replace(definition, version=version or _derived_version(definition))


# What a declared version may be (a derived one is "v" and twelve hex digits). Public because
# others apply the same rule: the gateway to its list's `version` filter and in its API document.
VERSION_PATTERN: Final = r"^[A-Za-z0-9._-]{1,64}$"
_VERSION = re.compile(VERSION_PATTERN)


def _derived_version(definition: WorkflowDefinition) -> str:
    """A digest of everything that decides how a run proceeds: two processes loading the same
    code derive the same version (nothing here depends on hash seeds or addresses); any change
    to a step, an option or a condition's code gives another."""
    shape = (
        definition.output_from,
        definition.retry,
        definition.timeout,
        {name: model.__qualname__ for name, model in definition.signals.items()},
        definition.input_model.__qualname__,
        [(spec.kind, spec) for spec in (definition.steps[name] for name in definition.order)],
    )
    return "v" + hashlib.sha256(_canonical(shape)).hexdigest()[:12]


def _canonical(value: Any) -> bytes:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [
            (item.name, _canonical(getattr(value, item.name))) for item in dataclasses.fields(value)
        ]
        return repr((type(value).__name__, fields)).encode()
    if isinstance(value, (set, frozenset)):
        return repr(sorted(_canonical(item) for item in value)).encode()
    if isinstance(value, Mapping):
        return repr(sorted((str(k), _canonical(v)) for k, v in value.items())).encode()
    if isinstance(value, (list, tuple)):
        return repr([_canonical(item) for item in value]).encode()
    return _canonical_leaf(value)


def _canonical_leaf(value: Any) -> bytes:
    if isinstance(value, type):
        return value.__qualname__.encode()
    code = getattr(value, "__code__", None)
    if isinstance(code, types.CodeType):
        return _code_fingerprint(code)
    return repr(value).encode()


def _code_fingerprint(code: types.CodeType) -> bytes:
    parts = [code.co_code, repr(code.co_names).encode()]
    parts.extend(
        _code_fingerprint(const) if isinstance(const, types.CodeType) else repr(const).encode()
        for const in code.co_consts
    )
    return b"\x01".join(parts)


def _checked_signals(
    workflow: str, signals: Mapping[str, type[BaseModel]]
) -> dict[str, type[BaseModel]]:
    for signal_name, model in signals.items():
        if not _BODY_NAME.match(signal_name):
            raise DefinitionError(
                f"workflow {workflow!r}: {signal_name!r} is not a valid signal name"
            )
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise DefinitionError(
                f"workflow {workflow!r}: signal {signal_name!r} needs a pydantic model, "
                f"got {model!r}"
            )
    return dict(signals)


def _check_list_field(workflow: str, spec: MapSpec, model: type[BaseModel]) -> None:
    """A map over the input must name a list field of the input model, as far as the model
    says (a field typed `Any` or `dict` is taken on trust and checked at run time)."""
    annotation: Any = model
    for part in split_reference(spec.over)[1]:
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return
        fields = {f.alias or field_name: f for field_name, f in annotation.model_fields.items()}
        fields.update(annotation.model_fields)
        if part not in fields:
            raise DefinitionError(
                f"workflow {workflow!r}: map {spec.name!r} is over {spec.over!r}, but the "
                f"input model {annotation.__name__} has no field {part!r}"
            )
        annotation = _unwrap_optional(fields[part].annotation)
    origin = typing.get_origin(annotation) or annotation
    if origin is Any or origin is object:
        return
    if not (isinstance(origin, type) and issubclass(origin, (list, tuple, Sequence))) or issubclass(
        origin, (str, bytes)
    ):
        raise DefinitionError(
            f"workflow {workflow!r}: map {spec.name!r} is over {spec.over!r}, which the input "
            f"model types as {annotation!r}, not a list"
        )


def _unwrap_optional(annotation: Any) -> Any:
    # `list[X] | None` and Annotated[list[X], …] are lists as far as a map cares.
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _unwrap_optional(args[0])
    return annotation


def _topological_order(workflow: str, steps: Mapping[str, StepSpec]) -> tuple[str, ...]:
    # Kahn's algorithm, keeping the definition order among steps that are ready together.
    remaining = {name: set(spec.after) for name, spec in steps.items()}
    order: list[str] = []
    while remaining:
        ready = [name for name, deps in remaining.items() if not deps]
        if not ready:
            raise DefinitionError(
                f"workflow {workflow!r} has a dependency cycle among {sorted(remaining)}"
            )
        for name in ready:
            order.append(name)
            del remaining[name]
        for deps in remaining.values():
            deps.difference_update(ready)
    return tuple(order)


class WorkflowRegistry:
    """The workflows a service knows, by name, each in one or more versions: new runs take the
    newest (the one registered last), a run already started finishes on its own."""

    def __init__(self, definitions: Iterable[WorkflowDefinition] = ()) -> None:
        self._versions: dict[str, dict[str, WorkflowDefinition]] = {}
        for definition in definitions:
            self.add(definition)
        self.check()

    def add(self, definition: WorkflowDefinition) -> None:
        versions = self._versions.setdefault(definition.name, {})
        if definition.version in versions:
            raise DefinitionError(
                f"workflow {definition.name!r} version {definition.version!r} is registered twice"
            )
        versions[definition.version] = definition

    def get(self, name: str, version: str | None = None) -> WorkflowDefinition | None:
        """The newest version of workflow `name`, or version `version` of it; None if not
        loaded."""
        versions = self._versions.get(name)
        if not versions:
            return None
        if version is None:
            return list(versions.values())[-1]
        return versions.get(version)

    def versions(self, name: str) -> list[str]:
        """The versions of `name` loaded here, oldest first."""
        return list(self._versions.get(name, {}))

    def __iter__(self) -> Iterator[WorkflowDefinition]:
        """The newest version of each workflow."""
        return iter([list(versions.values())[-1] for versions in self._versions.values()])

    def all_versions(self) -> list[WorkflowDefinition]:
        return [d for versions in self._versions.values() for d in versions.values()]

    def names(self) -> list[str]:
        return sorted(self._versions)

    def task_names(self) -> list[str]:
        """Every task step of every version of every workflow: the step queues the topology
        needs (a run of an older version still sends to its own)."""
        return sorted({step for wf in self.all_versions() for step in wf.task_names()})

    def local_bodies(self) -> list[str]:
        """Every body a local task of any loaded version runs: what the orchestrator loads."""
        return sorted({body for wf in self.all_versions() for body in wf.local_bodies()})

    def check(self) -> None:
        """Refuse what only the whole set shows: a child step naming a workflow that is not
        registered, or children that start each other in a cycle (which would never end)."""
        children: dict[str, list[str]] = {}
        for definition in self.all_versions():
            for spec in definition.steps.values():
                if isinstance(spec, ChildSpec):
                    if spec.workflow not in self._versions:
                        raise DefinitionError(
                            f"workflow {definition.name!r}: child step {spec.name!r} starts "
                            f"workflow {spec.workflow!r}, which is not registered "
                            f"(registered: {', '.join(self.names())})"
                        )
                    children.setdefault(definition.name, []).append(spec.workflow)
        _refuse_child_cycles(children)

    @classmethod
    def from_modules(cls, modules: Iterable[str]) -> WorkflowRegistry:
        registry = cls()
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise DefinitionError(
                    f"workflow module {module_name!r} (RELAYFLOW_WORKFLOWS, or RELAYFLOW_APPS) "
                    f"does not import: {type(exc).__name__}: {exc}"
                ) from exc
            definitions = getattr(module, "WORKFLOWS", None)
            if not isinstance(definitions, (list, tuple)):
                raise DefinitionError(
                    f"module {module_name!r} must define WORKFLOWS, a list of workflow definitions"
                )
            for definition in definitions:
                registry.add(definition)
        registry.check()
        return registry


def _refuse_child_cycles(children: Mapping[str, list[str]]) -> None:
    # Depth-first search; `path` holds the workflows on the way down, so meeting one again is a
    # cycle, reported from where it starts.
    done: set[str] = set()

    def visit(workflow: str, path: list[str]) -> None:
        if workflow in path:
            cycle = [*path[path.index(workflow) :], workflow]
            raise DefinitionError(
                f"workflows start each other as children in a cycle: {' -> '.join(cycle)}"
            )
        if workflow in done:
            return
        for child_workflow in children.get(workflow, ()):
            visit(child_workflow, [*path, workflow])
        done.add(workflow)

    for workflow in children:
        visit(workflow, [])
