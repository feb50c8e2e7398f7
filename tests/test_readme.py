"""The READMEs' commands work as written on a fresh clone: every `make`
target they name exists, and no shell example calls the project's modules
with a bare `python` on the host, where they fail (ModuleNotFoundError:
the dependencies are in .venv, which the make targets install first)."""

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
