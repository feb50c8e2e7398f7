"""Reading PromQL as a test: the metrics an expression selects and the
label matchers it puts on each. Shared by the dashboard's and the alerts'
tests, so both name only what the app exports."""

import re

# PromQL words that look like metric names but are not.
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
PROMQL_KEYWORDS |= {"group_left", "group_right", "inf", "nan"}

_STRING = r'"(?:\\.|[^"\\])*"'
_GROUPING = r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, matchers between its braces or "") for every metric an expr
    selects: the identifiers outside strings, label matchers, range windows,
    grouping label lists and numbers or durations, other than function names
    (followed by `(`) and keywords."""
    masked = re.sub(_STRING, lambda m: '"' + "x" * (len(m[0]) - 2) + '"', expr)
    masked = re.sub(
        r"\{[^}]*\}|\[[^\]]*\]", lambda m: m[0][0] + " " * (len(m[0]) - 2) + m[0][-1], masked
    )
    masked = re.sub(_GROUPING, lambda m: " " * len(m[0]), masked)
    masked = re.sub(r"(?<![\w:])\d[\w.]*", lambda m: " " * len(m[0]), masked)  # 0.99, 1h
    found = []
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", masked):
        rest = masked[match.end() :].lstrip()
        if match[0] in PROMQL_KEYWORDS or rest.startswith("("):
            continue
        braces = re.match(r"\s*\{([^}]*)\}", expr[match.end() :])  # the original text
        found.append((match[0], braces[1] if braces else ""))
    return found


def metric_names(expr: str) -> set[str]:
    """Every metric an expr selects."""
    return {name for name, _ in selectors(expr)}


def matchers(text: str) -> set[str]:
    """The label matchers between a selector's braces, spacing removed."""
    return {re.sub(r"\s+", "", part) for part in re.findall(rf"\w+\s*[=!]~?\s*{_STRING}", text)}
