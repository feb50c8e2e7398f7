"""Is a series going up? For the soak's samples: the median of the last
third against the first (robust to the spikes a shared machine adds), the
least-squares slope per minute (reported, for the eye), and whether the
value came back to idle once the load stopped."""

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    """How much a series may move before it counts as a leak."""

    # Under load, the last third's median may exceed the first third's by
    # this fraction, plus `slack`; None: not judged under load (the value
    # follows the load, e.g. connections in use).
    growth: float | None
    slack: float = 0.0
    # After the load, within this much of idle; None: not judged (RSS: the
    # allocator keeps its arenas, which is not a leak).
    after_slack: float | None = None

    def back(self, idle: float | None, after: float | None) -> bool:
        """Within `after_slack` of idle once the load is gone (or not judged)."""
        if self.after_slack is None or idle is None or after is None:
            return True
        return after <= idle + self.after_slack


@dataclass(frozen=True)
class Trend:
    idle: float | None
    first: float  # median of the first third of the samples under load
    last: float  # median of the last third
    slope_per_min: float  # least squares over every sample under load
    after: float | None
    problems: tuple[str, ...]

    @property
    def change(self) -> float | None:
        return (self.last - self.first) / self.first if self.first else None


def slope(times_s: list[float], values: list[float]) -> float:
    """Least-squares slope, per minute."""
    if len(times_s) < 2:
        return 0.0
    mean_t, mean_v = statistics.fmean(times_s), statistics.fmean(values)
    spread = sum((t - mean_t) ** 2 for t in times_s)
    if not spread:
        return 0.0
    rise = sum((t - mean_t) * (v - mean_v) for t, v in zip(times_s, values, strict=True))
    return rise / spread * 60


def judge(
    name: str,
    times_s: list[float],
    values: list[float],
    idle: float | None,
    after: float | None,
    limit: Limit,
) -> Trend:
    """`times_s`, `values`: the samples under load, in order."""
    third = max(1, len(values) // 3)
    first, last = statistics.median(values[:third]), statistics.median(values[-third:])
    problems = []
    if limit.growth is not None and last > first * (1 + limit.growth) + limit.slack:
        problems.append(
            f"{name} went up under load: last third's median {last:,.0f} > first third's "
            f"{first:,.0f} + {limit.growth:.0%} + {limit.slack:g}"
        )
    if not limit.back(idle, after):
        problems.append(
            f"{name} not back to idle after the load: {after:,.0f} > {idle:,.0f} "
            f"+ {limit.after_slack:g}"
        )
    return Trend(
        idle=idle,
        first=first,
        last=last,
        slope_per_min=slope(times_s, values),
        after=after,
        problems=tuple(problems),
    )
