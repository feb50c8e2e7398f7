"""The run's result: one table on stdout, the same rows as JSON."""

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Row:
    scenario: str  # e.g. "remote c64", "ttfb stored 5 MiB", "memory remote"
    target: str  # "app", "origin" or "app (2 workers)"
    rps: float | None = None
    mib_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    ratio: float | None = None
    ratio_to: str | None = None  # what the ratio divides by
    count_ok: bool | None = None  # None: no counting in this row
    count: str | None = None
    # Requests the origin answered per 1,000 plays (remote rows; counted
    # in nginx's log), and RSS growth per held slow listener (memory rows).
    origin_per_1000: float | None = None
    rss_kib_per_listener: float | None = None
    cache: str | None = None  # "on"/"off" as the app's metrics show; None: no remote bytes
    note: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def of_load(cls, result, **fields) -> "Row":
        """A row for one wrk run: its rates, latencies and errors, plus fields."""
        return cls(
            rps=result.rps,
            mib_s=result.mib_s,
            p50_ms=result.p50_ms,
            p99_ms=result.p99_ms,
            errors=result.error_count,
            error_kinds=result.errors,
            **fields,
        )


@dataclass
class Report:
    machine: dict[str, object]
    settings: dict[str, object]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print_row(row)
        return row

    @property
    def failures(self) -> list[str]:
        found = []
        for row in self.rows:
            if row.errors:
                found.append(
                    f"{row.scenario} [{row.target}]: {row.errors} failed requests {row.error_kinds}"
                )
            if row.count_ok is False:
                found.append(f"{row.scenario} [{row.target}]: count wrong: {row.count}")
        return found

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "machine": self.machine,
            "settings": self.settings,
            "rows": [asdict(row) for row in self.rows],
            "notes": self.notes,
            "failures": self.failures,
        }
        path.write_text(json.dumps(body, indent=2, default=_plain) + "\n")


def _plain(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def machine() -> dict[str, object]:
    import os

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


COLUMNS = (
    "scenario",
    "target",
    "req/s",
    "MiB/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "ratio",
    "orig/1k",
    "KiB/lsn",
    "cache",
    "count",
)
WIDTHS = (31, 16, 9, 8, 8, 8, 6, 18, 7, 7, 5, 6)


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def header() -> str:
    pairs = enumerate(zip(COLUMNS, WIDTHS, strict=True))
    cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs]
    return "  ".join(cells) + "  note"


def line(row: Row) -> str:
    ratio = "-" if row.ratio is None else f"{row.ratio:.2f}× {row.ratio_to or ''}".strip()
    count = "-" if row.count_ok is None else ("ok" if row.count_ok else "WRONG")
    cells = [
        row.scenario.ljust(WIDTHS[0]),
        row.target.ljust(WIDTHS[1]),
        _num(row.rps, 0).rjust(WIDTHS[2]),
        _num(row.mib_s, 0).rjust(WIDTHS[3]),
        _num(row.p50_ms, 2).rjust(WIDTHS[4]),
        _num(row.p99_ms, 2).rjust(WIDTHS[5]),
        str(row.errors).rjust(WIDTHS[6]),
        ratio.rjust(WIDTHS[7]),
        _num(row.origin_per_1000, 0).rjust(WIDTHS[8]),
        _num(row.rss_kib_per_listener, 0).rjust(WIDTHS[9]),
        (row.cache or "-").rjust(WIDTHS[10]),
        count.rjust(WIDTHS[11]),
    ]
    return "  ".join(cells) + ("  " + row.note if row.note else "")


def print_row(row: Row) -> None:
    print(line(row), flush=True)


def table(report: Report) -> str:
    return "\n".join([header(), *(line(row) for row in report.rows)])
