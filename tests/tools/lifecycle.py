"""The `async with` shape shared by the test tools that start something and must stop it."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Lifecycle:
    """`async with tool:` starts it and always stops it, also when the body fails."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
