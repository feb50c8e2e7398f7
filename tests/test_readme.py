"""The READMEs' commands work as written on a fresh clone: every `make`
target they name exists, and no shell example calls the project's modules
with a bare `python` on the host, where they fail (ModuleNotFoundError:
the dependencies are in .venv, which the make targets install first)."""

import json
import re
import subprocess

from settings import ROOT

READMES = [ROOT / "README.md", ROOT / "bench" / "README.md"]


def shell_lines(text: str) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines()]


def test_every_make_target_the_readmes_name_exists():
    targets = {
        t for readme in READMES for t in re.findall(r"make ([a-z][a-z-]*)", readme.read_text())
    }
    assert {"run", "test", "migrate", "seed"} <= targets
    for target in sorted(targets):
        # -n: print what would run, run nothing (no install, no database).
        dry = subprocess.run(
            ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert dry.returncode == 0, (target, dry.stderr)
        if target in ("migrate", "rollback", "seed", "run", "bench", "soak"):
            assert ".venv/bin/python -m" in dry.stdout, (target, dry.stdout)


def test_no_shell_example_runs_project_code_with_the_hosts_python():
    for readme in READMES:
        for line in shell_lines(readme.read_text()):
            if line.startswith("docker"):
                continue  # inside the image, `python` is the venv's
            assert not re.search(r"(^|[\s;&|])python3? (-m )?(db|bench|server)\b", line), (
                f"{readme.name}: {line!r}: use a make target"
            )


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header row starts with header."""
    lines = text[text.index(header) :].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_readmes_figures_are_the_results_files():
    """Figures quoted in prose come from a committed results file, so they
    cannot drift from it (a new run means a new file and new figures)."""
    bench = json.loads((ROOT / "bench/results/2026-11-30-full-2core.json").read_text())
    rows = {row["scenario"]: row for row in bench["rows"]}
    readme = table_rows((ROOT / "README.md").read_text(), "| Scenario | req/s |")
    quoted = {cells[0]: cells for cells in readme}
    for label, scenario in [
        ("`GET /healthz` c32", "api healthz c32"),
        ("`GET /clips?limit=50` c32", "api list c32"),
        ("`GET /clips?genre=…&sort=popular&limit=50` c32", "api genre popular c32"),
        ("`GET /clips/{id}/stats` c32", "api stats c32"),
    ]:
        row = rows[scenario]
        assert quoted[label][1] == f"{row['rps']:,.0f}", label
        assert quoted[label][2] == f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f}", label
    for source, label in (
        ("stored", "500 KiB stored clip c1 / c16 / c64 / c256"),
        ("remote", "500 KiB remote clip, cached, c1 / c16 / c64 / c256"),
    ):
        levels = [rows[f"{source} c{n}"] for n in (1, 16, 64, 256)]
        assert quoted[label][1] == " / ".join(f"{r['rps']:,.0f}" for r in levels), source
        ratios = " / ".join(f"{r['ratio']:.2f}" for r in levels)
        assert quoted[label][3].startswith(ratios), source
    for label, scenario in [
        ("500 KiB remote clip, cache off, c64", "remote cache off c64"),
        ("500 KiB remote clip on an HTTPS origin, cached, c64", "https remote c64"),
    ]:
        assert quoted[label][1] == f"{rows[scenario]['rps']:,.0f}", label
        assert (
            quoted[label][2] == f"{rows[scenario]['p50_ms']:.1f} / {rows[scenario]['p99_ms']:.1f}"
        )

    soak = json.loads((ROOT / "bench/results/soak-latest.json").read_text())["summary"]
    series = {
        "RSS MiB": "rss_mib",
        "open fds": "fds",
        "event-loop tasks": "tasks",
        "pool connections": "pool_connections",
        "pool in use": "pool_in_use",
        "streams in flight": "streams_in_flight",
    }
    quoted = table_rows((ROOT / "bench/README.md").read_text(), "| series | idle |")
    assert [cells[0] for cells in quoted] == list(series)
    for cells in quoted:
        numbers = soak[series[cells[0]]]
        for cell, key in zip(cells[1:4], ("idle", "first", "last"), strict=True):
            assert float(cell) == round(float(numbers[key]), 1), (cells[0], key)
