"""Reading the app's /metrics as a test: parsed by prometheus_client."""

from prometheus_client.parser import text_string_to_metric_families

from tests.support import wait_until


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics body, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value; fails when the app does not export it."""
    key = (name, tuple(sorted(labels.items())))
    found = samples(text)
    if key not in found:
        raise AssertionError(f"{name}{labels} not in /metrics")
    return found[key]


async def scrape(client, **headers: str) -> str:
    """The app's /metrics, as Prometheus reads it."""
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200
    return await response.text()


async def settled(client, name: str, value: float, *, seconds: float = 5.0, **labels: str) -> str:
    """/metrics once the sample `name{labels}` reads `value` (polled, within
    `seconds`): for what the app finishes after the client's request."""
    last = None

    async def reached() -> str | None:
        nonlocal last
        text = await scrape(client)
        last = metric(text, name, **labels)
        return text if last == value else None

    return await wait_until(
        reached, f"{name}{labels} reaching {value}", seconds=seconds, details=lambda: f"last {last}"
    )
