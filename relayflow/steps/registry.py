"""Declaring step bodies: `StepRegistry` and its `@steps.step(...)` decorator."""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import TypeAdapter

from relayflow.errors import DefinitionError
from relayflow.steps.context import Reads, ReadSource, StepContext
from relayflow.workflow import MapSpec, TaskSpec, WorkflowDefinition, WorkflowRegistry

InputT = TypeVar("InputT")
StepFunction = Callable[[StepContext[InputT]], Awaitable[Any]]

_STEP_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


@dataclass(frozen=True, slots=True)
class StepDefinition:
    """A step body and how to call it."""

    name: str
    function: StepFunction[Any]
    input_adapter: TypeAdapter[Any]
    transactional: bool
    # What its output is read back as by a later step (`ctx.output(body)`): its declared
    # return type.
    output_adapter: TypeAdapter[Any] = field(default_factory=lambda: TypeAdapter(Any))
    # The bodies whose outputs it reads: each must run, in every workflow that uses this body,
    # as a step this one comes after (checked when the definitions load, `StepRegistry.bind`).
    reads: tuple[StepFunction[Any], ...] = ()

    def parse_input(self, raw: Any) -> Any:
        """Raises `pydantic.ValidationError` when the input does not fit the declared model."""
        return self.input_adapter.validate_python(raw)


def _output_type(function: Callable[..., Any]) -> Any:
    """The `R` of `async def body(ctx) -> R`; `Any` when the annotation does not say."""
    try:
        hints = typing.get_type_hints(function)
    except NameError:
        return Any
    return hints.get("return", Any)


def _input_type(function: Callable[..., Any]) -> Any:
    """The `X` of a body declared `async def body(ctx: StepContext[X])`; `dict[str, Any]`
    when the annotation does not say."""
    parameters = list(inspect.signature(function).parameters)
    if not parameters:
        raise DefinitionError(f"step body {function.__qualname__} must take a StepContext")
    try:
        hints = typing.get_type_hints(function)
    except NameError as exc:
        raise DefinitionError(
            f"cannot resolve the annotations of {function.__qualname__} ({exc}); "
            "pass input_model= to the decorator"
        ) from exc
    hint = hints.get(parameters[0])
    args = typing.get_args(hint)
    if typing.get_origin(hint) is StepContext and args:
        return args[0]
    return dict[str, Any]


# Every registered body's name, by its function: what `reads=` and `ctx.output(body)` name a
# body by, whichever registry (or subset) a process loaded.
_BODY_NAMES: dict[Callable[..., Any], str] = {}


def body_name(function: Callable[..., Any]) -> str:
    name = _BODY_NAMES.get(function)
    if name is None:
        raise DefinitionError(
            f"{getattr(function, '__qualname__', function)!r} is not a registered step body"
        )
    return name


class StepRegistry:
    """The step bodies a module offers, by step name.

    steps = StepRegistry()

    @steps.step("persist", transactional=True)
    async def persist(ctx: StepContext[ContactForm]) -> PersistOutput: ...
    """

    def __init__(
        self, definitions: Iterable[StepDefinition] = (), *, migrations: Iterable[str] = ()
    ) -> None:
        self._by_name: dict[str, StepDefinition] = {}
        # Packages whose `migrations` folder holds the tables these bodies write (applied by
        # the step service that serves them, after the core's).
        self.migrations: tuple[str, ...] = tuple(dict.fromkeys(migrations))
        # What each (workflow, step) these bodies serve reads, once `bind` has checked it.
        self._reads: dict[tuple[str, str, str], dict[Callable[..., Any], ReadSource]] = {}
        for definition in definitions:
            self.add(definition)

    def add(self, definition: StepDefinition) -> None:
        if definition.name in self._by_name:
            raise DefinitionError(f"step {definition.name!r} is registered twice")
        self._by_name[definition.name] = definition

    def step(
        self,
        name: str,
        *,
        transactional: bool = False,
        input_model: Any = None,
        reads: Iterable[StepFunction[Any]] = (),
    ) -> Callable[[StepFunction[InputT]], StepFunction[InputT]]:
        """Register the decorated coroutine function as the body of step `name`. Its input is
        parsed into `input_model`, by default the type argument of its `StepContext[...]`.
        `reads`: the bodies whose outputs it reads with `ctx.output(body)`."""
        if not re.match(_STEP_NAME, name):
            raise DefinitionError(f"{name!r} is not a valid step name")

        def register(function: StepFunction[InputT]) -> StepFunction[InputT]:
            if not inspect.iscoroutinefunction(function):
                raise DefinitionError(f"step {name!r}: the body must be an `async def` function")
            model = input_model if input_model is not None else _input_type(function)
            _BODY_NAMES[function] = name
            self.add(
                StepDefinition(
                    name=name,
                    function=function,
                    input_adapter=TypeAdapter(model),
                    transactional=transactional,
                    output_adapter=TypeAdapter(_output_type(function)),
                    reads=tuple(reads),
                )
            )
            return function

        return register

    def get(self, name: str) -> StepDefinition | None:
        return self._by_name.get(name)

    def reads_of(self, workflow: str, step: str, body: str) -> Reads:
        """Where `body`, run for `step` of `workflow` (as the step's body or its undo), finds
        the outputs it reads (after `bind`)."""
        return self._reads.get((workflow, step, body), {})

    def bind(self, workflows: WorkflowRegistry) -> None:
        """Check, for every step of every workflow that one of these bodies serves, that each
        body it reads runs as exactly one step it comes after, and remember that step; refuse
        (naming the workflow and the step) a read of anything else. Run at start-up, so that a
        wrong read stops the service instead of failing a step mid-run."""
        reads: dict[tuple[str, str, str], dict[Callable[..., Any], ReadSource]] = {}
        for workflow in workflows:
            for step, spec in workflow.steps.items():
                if not isinstance(spec, (TaskSpec, MapSpec)):
                    continue
                definition = self._by_name.get(spec.body)
                if definition is not None and definition.reads:
                    if isinstance(spec, MapSpec):
                        raise DefinitionError(
                            f"workflow {workflow.name!r}: map {step!r} runs body {spec.body!r}, "
                            "which reads other steps' outputs; a map item's body sees only its "
                            "item"
                        )
                    reads[(workflow.name, step, spec.body)] = {
                        function: _source(workflow, step, body_name(function), function)
                        for function in definition.reads
                    }
                undo = self._by_name.get(spec.compensate) if isinstance(spec, TaskSpec) else None
                if undo is not None and undo.reads:
                    # An undo reads the step it undoes as well as what came before it.
                    reads[(workflow.name, step, undo.name)] = {
                        function: _source(
                            workflow, step, body_name(function), function, including_itself=True
                        )
                        for function in undo.reads
                    }
        self._reads = reads

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __iter__(self) -> Iterator[StepDefinition]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def select(self, names: Iterable[str]) -> StepRegistry:
        """The subset a process serves; unknown names are a definition error."""
        wanted = list(dict.fromkeys(names))
        unknown = [name for name in wanted if name not in self._by_name]
        if unknown:
            raise DefinitionError(
                f"no step body for {unknown}; known steps: {', '.join(self.names())}"
            )
        subset = StepRegistry((self._by_name[name] for name in wanted), migrations=self.migrations)
        subset._reads = self._reads
        return subset

    @classmethod
    def from_modules(cls, modules: Iterable[str]) -> StepRegistry:
        """Merge the `steps` registries of the named modules."""
        merged = cls()
        migrations: list[str] = []
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise DefinitionError(
                    f"step module {module_name!r} (RELAYFLOW_STEP_MODULES, or RELAYFLOW_APPS) "
                    f"does not import: {type(exc).__name__}: {exc}"
                ) from exc
            found = getattr(module, "steps", None)
            if not isinstance(found, StepRegistry):
                raise DefinitionError(f"module {module_name!r} must define `steps`, a StepRegistry")
            for definition in found:
                merged.add(definition)
            migrations.extend(found.migrations)
        merged.migrations = tuple(dict.fromkeys(migrations))
        return merged


def _source(
    workflow: WorkflowDefinition,
    step: str,
    read: str,
    function: Callable[..., Any],
    *,
    including_itself: bool = False,
) -> ReadSource:
    ancestors = workflow.ancestors[step] | ({step} if including_itself else set())
    runs = [
        name
        for name in sorted(ancestors)
        if isinstance(spec := workflow.steps[name], (TaskSpec, MapSpec)) and spec.body == read
    ]
    if not runs:
        raise DefinitionError(
            f"workflow {workflow.name!r}: step {step!r} reads the output of body {read!r}, "
            "which no step it comes after runs"
            + (
                f" (steps it comes after: {', '.join(sorted(ancestors))})"
                if ancestors
                else " (it comes after no step)"
            )
        )
    if len(runs) > 1:
        raise DefinitionError(
            f"workflow {workflow.name!r}: step {step!r} reads body {read!r}, which several "
            f"steps it comes after run ({', '.join(runs)}); give each its own body"
        )
    return ReadSource(
        step=runs[0],
        adapter=TypeAdapter(_output_type(function)),
        is_map=isinstance(workflow.steps[runs[0]], MapSpec),
    )
