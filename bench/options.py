"""What one harness run does: every knob, read from the environment once."""

from dataclasses import dataclass

SCENARIOS = ("api", "remote", "stored", "ttfb", "memory", "scaling", "previews")


class OptionError(ValueError):
    pass


@dataclass(frozen=True)
class Options:
    # Seconds of load per wrk run; slow readers hold their streams for twice that.
    duration: float = 10.0
    scenarios: tuple[str, ...] = SCENARIOS
    # Passed to the app as WORKERS; scaling compares 1 and 2 regardless.
    workers: int = 1
    # Unset: a fresh embedded PostgreSQL in a temporary directory.
    database_url: str | None = None
    # Pin servers and load generator to separate cores so neither starves
    # the other; "auto" pins when there are at least two cores.
    pin: str = "auto"
    # Scenario whose app runs py-spy records ("remote", "stored", "api"), or "".
    profile: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "Options":
        try:
            duration = float(env.get("BENCH_DURATION") or 10)
            workers = int(env.get("WORKERS") or 1)
        except ValueError as error:
            raise OptionError(f"BENCH_DURATION and WORKERS must be numbers: {error}") from None
        if duration <= 0 or workers < 1:
            raise OptionError("BENCH_DURATION must be > 0 and WORKERS >= 1")
        raw = env.get("BENCH_SCENARIOS") or ",".join(SCENARIOS)
        # "counting" is accepted but always on: every stream scenario checks counts.
        names = [s.strip() for s in raw.split(",")]
        scenarios = tuple(s for s in names if s and s != "counting")
        unknown = sorted(set(scenarios) - set(SCENARIOS))
        if unknown:
            raise OptionError(
                f"unknown BENCH_SCENARIOS {unknown}; choose from {', '.join(SCENARIOS)}"
            )
        return cls(
            duration=duration,
            scenarios=tuple(s for s in SCENARIOS if s in scenarios),
            workers=workers,
            database_url=env.get("DATABASE_URL") or None,
            pin=read_pin(env),
            profile=(env.get("BENCH_PROFILE") or "").strip(),
        )


@dataclass(frozen=True)
class SoakOptions:
    """`make soak`: minutes of mixed load against one app process."""

    minutes: float = 10.0
    database_url: str | None = None
    pin: str = "auto"

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "SoakOptions":
        try:
            minutes = float(env.get("SOAK_MINUTES") or 10)
        except ValueError as error:
            raise OptionError(f"SOAK_MINUTES must be a number: {error}") from None
        if minutes <= 0:
            raise OptionError("SOAK_MINUTES must be > 0")
        return cls(minutes=minutes, database_url=env.get("DATABASE_URL") or None, pin=read_pin(env))


def read_pin(env: dict[str, str]) -> str:
    pin = (env.get("BENCH_PIN") or "auto").lower()
    if pin not in ("auto", "0", "1"):
        raise OptionError("BENCH_PIN is auto, 0 or 1")
    return pin
