"""Named SQL queries kept in `.sql` files.

A file holds blocks introduced by a line `-- name: some_query`; the text up to the next such line
is the query. Parameters are positional (`$1`), never formatted into the text.
"""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


class Queries:
    def __init__(self, text: str, *, source: str = "<sql>") -> None:
        self._queries: dict[str, str] = {}
        matches = list(_NAME.finditer(text))
        if not matches:
            raise ValueError(f"{source}: no '-- name: …' blocks")
        for index, match in enumerate(matches):
            end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
            body = text[match.end() : end].strip()
            name = match.group(1)
            if name in self._queries:
                raise ValueError(f"{source}: query {name!r} is defined twice")
            self._queries[name] = body
        self._source = source

    @classmethod
    def load(cls, package: str, filename: str = "queries.sql") -> Queries:
        text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
        return cls(text, source=f"{package}/{filename}")

    def __getattr__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise AttributeError(f"{self._source} has no query {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._queries)
