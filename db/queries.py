"""Named SQL queries loaded from `sql/*.sql`.

A file holds one or more queries, each introduced by a `-- name: <name>`
header (the aiosql convention) and written with asyncpg's native `$1`
placeholders. Loading fails loudly, naming file and line, on an empty or a
duplicate query, so a broken SQL file stops the service at start-up.
"""

import re
from collections.abc import Mapping
from pathlib import Path

_HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$")


class QueryError(Exception):
    pass


class Queries(Mapping[str, str]):
    def __init__(self, queries: dict[str, str]):
        self._queries = queries

    @classmethod
    def load(cls, directory: Path) -> "Queries":
        queries: dict[str, str] = {}
        origin: dict[str, str] = {}
        for path in sorted(directory.glob("*.sql")):
            name, start, body = None, 0, []
            lines = path.read_text(encoding="utf-8").splitlines()
            for number, line in enumerate([*lines, "-- name: _end"], start=1):
                header = _HEADER.match(line)
                if header is None:
                    body.append(line)
                    continue
                if name is not None:
                    sql = "\n".join(l for l in body if not l.lstrip().startswith("--")).strip()
                    if not sql:
                        raise QueryError(f"{path}:{start}: query {name!r} is empty")
                    if name in queries:
                        raise QueryError(
                            f"{path}:{start}: query {name!r} already defined at {origin[name]}"
                        )
                    queries[name], origin[name] = sql, f"{path}:{start}"
                elif any(l.strip() and not l.lstrip().startswith("--") for l in body):
                    raise QueryError(f"{path}:1: SQL before the first '-- name:' header")
                name, start, body = header.group(1), number, []
        return cls(queries)

    def __getitem__(self, name: str) -> str:
        return self._queries[name]

    def __iter__(self):
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)


SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
SQL = Queries.load(SQL_DIR)
