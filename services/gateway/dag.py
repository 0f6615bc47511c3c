"""Laying a workflow's DAG out for people: columns of steps that can run side by side.

A step's column is its depth: roots are in column 0, every other step one column right of its
deepest dependency. Steps in one column never depend on each other, so they are the ones that
may run in parallel; within a column they keep the definition's order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def columns(order: Sequence[str], after: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """`order` is topological (dependencies first), `after` each step's dependencies. A step
    whose dependencies are unknown (not in `order`) counts them as roots."""
    depth: dict[str, int] = {}
    for name in order:
        depth[name] = 1 + max((depth.get(dep, -1) for dep in after.get(name, ())), default=-1)
    laid_out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name in order:
        laid_out[depth[name]].append(name)
    return laid_out
