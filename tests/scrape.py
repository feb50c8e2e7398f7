"""Reading the app's /metrics as a test: parsed by prometheus_client."""

from prometheus_client.parser import text_string_to_metric_families


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
