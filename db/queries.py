"""Named SQL queries loaded from `sql/*.sql`.

A file holds one or more queries, each introduced by a `-- name: <name>`
header (the aiosql convention) and written with asyncpg's native `$1`
placeholders. Loading fails loudly, naming file and line, on an empty or a
duplicate query, so a broken SQL file stops the service at start-up.
"""

import re
from collections.abc import Mapping
from pathlib import Path

_HEADER = re.compile(r"^--\s*name:\s*(\S+)\s*$", re.MULTILINE)
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


class QueryError(Exception):
    pass


def _code(text: str) -> str:
    """SQL without its comment lines."""
    lines = (line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return "\n".join(lines).strip()


class Queries(Mapping[str, str]):
    def __init__(self, queries: dict[str, str]):
        self._queries = queries

    @classmethod
    def load(cls, directory: Path, pattern: str = "*.sql") -> "Queries":
        """Every query of the files `pattern` matches in `directory`."""
        queries: dict[str, str] = {}
        where: dict[str, str] = {}
        for path in sorted(directory.glob(pattern)):
            text = path.read_text(encoding="utf-8")
            headers = list(_HEADER.finditer(text))
            if not headers or _code(text[: headers[0].start()]):
                raise QueryError(f"{path}:1: SQL before the first '-- name:' header")
            ends = [h.start() for h in headers[1:]] + [len(text)]
            for header, end in zip(headers, ends, strict=True):
                name, line = header[1], text.count("\n", 0, header.start()) + 1
                here = f"{path}:{line}"
                if not _NAME.fullmatch(name):
                    raise QueryError(f"{here}: {name!r} is not a valid query name")
                if name in queries:
                    raise QueryError(f"{here}: query {name!r} already defined at {where[name]}")
                sql = _code(text[header.end() : end])
                if not sql:
                    raise QueryError(f"{here}: query {name!r} is empty")
                queries[name], where[name] = sql, here
        return cls(queries)

    def __getitem__(self, name: str) -> str:
        return self._queries[name]

    def __iter__(self):
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)


SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
SQL = Queries.load(SQL_DIR)
