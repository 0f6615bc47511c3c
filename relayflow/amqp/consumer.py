"""Consuming in batches. How each delivery is then settled is `relayflow.amqp.settle`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from relayflow import metrics
from relayflow.amqp.connection import quietly

# The dead-letter headers used to live here (their home is `relayflow.amqp.settle`).
from relayflow.amqp.settle import QUEUE_HEADER, REASON_HEADER, hand_back

__all__ = ["QUEUE_HEADER", "REASON_HEADER", "BatchConsumer", "BatchHandler", "Batches"]

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[AbstractIncomingMessage]], Awaitable[None]]


class Batches:
    """Hands what it is offered to `handler` in batches of what has arrived, up to `max_batch`,
    from `workers` tasks. The deliveries of a queue (`BatchConsumer`), or messages that come
    from this process itself (commands handed over in process, `relayflow.steps.eager`).

    With `workers` > 1, several batches are handled at once; the handler must then be safe for
    concurrent batches (the orchestrator's is: it locks workflow rows). The handler settles
    (`relayflow.amqp.settle`) every message it is given.
    """

    def __init__(
        self, name: str, handler: BatchHandler, *, max_batch: int = 100, workers: int = 1
    ) -> None:
        self._name = name
        self._handler = handler
        self._max_batch = max_batch
        self._workers = workers
        # None tells a worker to finish: it comes after every delivery already received.
        self._pending: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"batches:{self._name}:{i}")
            for i in range(self._workers)
        ]

    def offer(self, message: AbstractIncomingMessage) -> bool:
        """Take `message` into the next batch; False once stopping, when it is not taken."""
        if self._stopping or not self._tasks:
            return False
        self._pending.put_nowait(message)
        return True

    async def _run(self) -> None:
        while True:
            first = await self._pending.get()
            if first is None:
                return
            batch = [first]
            finish = False
            while len(batch) < self._max_batch and not self._pending.empty():
                message = self._pending.get_nowait()
                if message is None:
                    finish = True
                    break
                batch.append(message)
            await self._handle(batch)
            if finish:
                return

    async def _handle(self, batch: list[AbstractIncomingMessage]) -> None:
        metrics.count_redeliveries(self._name, sum(1 for m in batch if m.redelivered))
        try:
            await self._handler(batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The handler settles each message itself; reaching here is a bug or an outage.
            # Hand the unsettled ones back so another attempt (or replica) can take them.
            log.exception("batch handler failed; requeueing %d message(s)", len(batch))
            for message in batch:
                if not message.processed:
                    await hand_back(message)
            await asyncio.sleep(1.0)

    async def stop(self, grace: float = 10.0) -> None:
        """Take nothing more and finish what is in hand within `grace`; what was offered and
        never handled is handed back."""
        self._stopping = True
        for _ in self._tasks:
            self._pending.put_nowait(None)
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=grace)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks = []
        while not self._pending.empty():
            left = self._pending.get_nowait()
            if left is not None and not left.processed:
                await hand_back(left)


class BatchConsumer(Batches):
    """A queue's deliveries in `Batches`. Whatever is still unsettled after a stop goes back to
    the broker when the channel closes, or is handed back."""

    def __init__(
        self,
        queue: AbstractQueue,
        handler: BatchHandler,
        *,
        max_batch: int = 100,
        workers: int = 1,
    ) -> None:
        super().__init__(queue.name, handler, max_batch=max_batch, workers=workers)
        self._queue = queue
        self._consumer_tag: str | None = None

    async def start(self) -> None:
        await super().start()
        self._consumer_tag = await self._queue.consume(self._on_message)

    @property
    def consuming(self) -> bool:
        """Attached: started, not stopped, and its channel open (a robust channel reopens and
        restores the consumer after a reconnect; meanwhile this is False)."""
        return self._consumer_tag is not None and not self._queue.channel.is_closed

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._pending.put_nowait(message)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking deliveries and finish those in hand within `grace`."""
        self._stopping = True
        if self._consumer_tag is not None:
            await quietly(
                f"cancelling the consumer of {self._queue.name}",
                functools.partial(self._queue.cancel, self._consumer_tag),
            )
            self._consumer_tag = None
        await super().stop(grace)
