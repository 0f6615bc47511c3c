"""The compact progress display of `workflows start --wait` on stderr: steps completed out of
the total and the steps running now, on one line rewritten in place on a terminal, one line per
change otherwise (a log, a CI job)."""

from __future__ import annotations

from typing import TextIO

from relayflow.cli.follow import Event

_DONE = frozenset({"step.completed", "step.skipped"})
_STARTED = frozenset({"step.started", "step.retrying", "step.sleeping", "step.compensating"})
_ENDED = frozenset({"step.failed", "step.compensated", "step.compensation_failed", *_DONE})


class Progress:
    def __init__(self, workflow_id: str, out: TextIO, *, tty: bool) -> None:
        self.workflow_id = workflow_id
        self.total: int | None = None
        self._out = out
        self._tty = tty
        self._done: set[str] = set()
        self._running: dict[str, None] = {}
        self._shown = ""

    @property
    def completed(self) -> int:
        return len(self._done)

    def update(self, event: Event) -> None:
        step = event.body.get("stepName")
        if isinstance(step, str) and not event.body.get("stepKey"):
            if event.event in _STARTED:
                self._running[step] = None
            elif event.event in _ENDED:
                self._running.pop(step, None)
                if event.event in _DONE:
                    self._done.add(step)
        elif event.terminal:
            self._running.clear()
        self._show(self.line())

    def line(self) -> str:
        total = "?" if self.total is None else str(self.total)
        text = f"{self.workflow_id}: {self.completed}/{total} steps"
        if self._running:
            text += f", running {', '.join(self._running)}"
        return text

    def finish(self, text: str) -> None:
        """The last line, kept on screen."""
        if self._tty:
            self._out.write("\r\x1b[K")
        self._out.write(text + "\n")
        self._out.flush()

    def _show(self, text: str) -> None:
        if text == self._shown:
            return
        self._shown = text
        if self._tty:
            self._out.write(f"\r\x1b[K{text}")
        else:
            self._out.write(text + "\n")
        self._out.flush()
