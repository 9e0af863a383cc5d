"""A task of the user's own, from their own files, run by ``sofo-run`` exactly as docs/library.md
shows it ("Your own task from the command line"): the page's Python and YAML blocks are written
into a temporary directory outside the repository, and each of its ``sofo-run`` lines runs there
(tiny sizes appended) through the installed console script, where the working directory is not
on ``sys.path`` by itself. A single run, a model and optimizer swap, a ``-m`` sweep under
``hydra/launcher=local_parallel`` (child processes import the user's module), and the pre-check's
one-line errors for the user's group."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "library.md"
HEADING = "## Your own task from the command line"
TINY = ["iterations=3", "batch_size=4", "task.n_steps=12", "model.n_hidden=8", "optim.n_tangents=4",
        "logger=none", "progress=false", "plots=false", "log_every=1", "eval_every=3", "checkpoint_every=3"]
TINY_ADAM = [a for a in TINY if not a.startswith("optim.n_tangents")]


def section() -> str:
    text = DOC.read_text()
    assert HEADING in text, f"{DOC} has no section {HEADING!r}"
    rest = text.split(HEADING, 1)[1]
    return re.split(r"^## ", rest, flags=re.M)[0]


def files() -> dict[str, str]:
    """The page's code blocks that name their file on their first line (``# mylab/flipflop.py``)."""
    out = {}
    for lang, body in re.findall(r"^```(\w+)\n(.*?)^```", section(), flags=re.S | re.M):
        first = body.splitlines()[0]
        if lang in ("python", "yaml") and first.startswith("# "):
            out[first[2:].strip()] = body
    return out


def commands() -> list[list[str]]:
    bash = re.findall(r"^```bash\n(.*?)^```", section(), flags=re.S | re.M)
    return [shlex.split(line)[1:] for block in bash for line in block.splitlines() if line.startswith("sofo-run ")]


def sofo_run() -> str:
    exe = Path(sys.executable).with_name("sofo-run")
    found = str(exe) if exe.is_file() else shutil.which("sofo-run")
    assert found, "sofo-run is not installed (pip install -e .)"
    return found


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("myproject")
    assert REPO not in root.parents
    (root / "mylab").mkdir()
    (root / "mylab" / "__init__.py").write_text("")
    for name, body in files().items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    return root


def run(args, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONPATH")}
    return subprocess.run([sofo_run(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_page_shows_the_task_its_yaml_and_the_commands():
    assert set(files()) == {"mylab/flipflop.py", "conf/task/flipflop.yaml"}
    assert "_target_: mylab.flipflop.FlipFlop" in files()["conf/task/flipflop.yaml"]
    cmds = commands()
    assert len(cmds) == 3 and all("--config-dir" in c and "task=flipflop" in c for c in cmds)
    assert "-m" in cmds[2] and "hydra/launcher=local_parallel" in cmds[2]


@pytest.mark.slow
def test_single_runs_of_the_users_task(project):
    for i, args in enumerate(commands()[:2]):
        tiny = TINY if "optim=sofo" in args else TINY_ADAM
        run_dir = project / "runs" / str(i)
        out = run([*args, *tiny, f"hydra.run.dir={run_dir}"], cwd=project)
        assert out.returncode == 0, out.stderr[-3000:]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["iterations"] == 3
        assert 0.0 <= summary["final"]["eval/bit_accuracy"] <= 1.0
        assert summary["choices"]["task"] == "flipflop"
        config = (run_dir / ".hydra" / "config.yaml").read_text()
        assert "_target_: mylab.flipflop.FlipFlop" in config
        assert (run_dir / "checkpoints").is_dir()


@pytest.mark.slow
def test_sweep_of_the_users_task_under_local_parallel(project):
    args = commands()[2]
    sweep = project / "sweep"
    tiny = [a for a in TINY if not a.startswith("optim.")]   # optim=sofo,adam: each with its own defaults
    out = run([*args, *tiny, f"hydra.sweep.dir={sweep}"], cwd=project)
    assert out.returncode == 0, out.stderr[-3000:]
    table = json.loads((sweep / "sweep_summary.json").read_text())
    assert table["counts"] == {"completed": 2}, table
    assert list(sweep.glob(".submitit/*")), "the runs did not go through submitit_local"
    for row in table["runs"]:
        assert json.loads((Path(row["run_dir"]) / "summary.json").read_text())["status"] == "completed"


def test_the_precheck_knows_the_users_group(project, sofo_run_here):
    """In-process (sofo-run's main(): its one line and exit 2 before Hydra starts)."""
    base = ["--config-dir", "conf", "optim=adam", *TINY_ADAM]
    cases = [
        (["task=flipflp"], "task='flipflp'", "'flipflop'"),
        (["task=flipflop", "task.n_stepz=3"], "task.n_stepz", "pulse_prob"),
        (["task=flipflop", "+task.colour=3"], "task.colour", "'n_steps', 'pulse_prob'"),
    ]
    for extra, key, allowed in cases:
        out = sofo_run_here([*base, *extra, f"hydra.run.dir={project / 'bad'}"], cwd=project)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2, (extra, out.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (extra, out.stderr)
        assert key in lines[0] and allowed in lines[0], (extra, lines[0])
    assert not (project / "bad").exists()


def test_an_unimportable_target_is_one_line(tmp_path, sofo_run_here):
    (tmp_path / "conf" / "task").mkdir(parents=True)
    (tmp_path / "conf" / "task" / "ghost.yaml").write_text("_target_: nolab.Ghost\nn_steps: 3\n")
    out = sofo_run_here(["--config-dir", "conf", "task=ghost", "optim=adam", f"hydra.run.dir={tmp_path / 'r'}"],
                        cwd=tmp_path)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "task._target_='nolab.Ghost'" in lines[0] and "No module named 'nolab'" in lines[0]
