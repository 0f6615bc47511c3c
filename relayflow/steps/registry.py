"""Declaring step bodies: `StepRegistry` and its `@steps.step(...)` decorator."""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import TypeAdapter

from relayflow.errors import DefinitionError
from relayflow.steps.context import StepContext

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

    def parse_input(self, raw: Any) -> Any:
        """Raises `pydantic.ValidationError` when the input does not fit the declared model."""
        return self.input_adapter.validate_python(raw)


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
    ) -> Callable[[StepFunction[InputT]], StepFunction[InputT]]:
        """Register the decorated coroutine function as the body of step `name`. Its input is
        parsed into `input_model`, by default the type argument of its `StepContext[...]`."""
        if not re.match(_STEP_NAME, name):
            raise DefinitionError(f"{name!r} is not a valid step name")

        def register(function: StepFunction[InputT]) -> StepFunction[InputT]:
            if not inspect.iscoroutinefunction(function):
                raise DefinitionError(f"step {name!r}: the body must be an `async def` function")
            model = input_model if input_model is not None else _input_type(function)
            self.add(
                StepDefinition(
                    name=name,
                    function=function,
                    input_adapter=TypeAdapter(model),
                    transactional=transactional,
                )
            )
            return function

        return register

    def get(self, name: str) -> StepDefinition | None:
        return self._by_name.get(name)

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
        return StepRegistry((self._by_name[name] for name in wanted), migrations=self.migrations)

    @classmethod
    def from_modules(cls, modules: Iterable[str]) -> StepRegistry:
        """Merge the `steps` registries of the named modules."""
        merged = cls()
        migrations: list[str] = []
        for module_name in modules:
            module = importlib.import_module(module_name)
            found = getattr(module, "steps", None)
            if not isinstance(found, StepRegistry):
                raise DefinitionError(f"module {module_name!r} must define `steps`, a StepRegistry")
            for definition in found:
                merged.add(definition)
            migrations.extend(found.migrations)
        merged.migrations = tuple(dict.fromkeys(migrations))
        return merged
