"""``sofo-analyze RUN_DIR`` (sofo_lab/cli/analyze.py): what it writes for a run of the user's own task
(the docs' flip-flop, trained by sofo-run: docs/results/analysis_runs/flipflop, loaded with
``--config-dir`` from a folder outside the repository), and its one-line errors: a path that is no
directory, a directory that is no run, a run without a checkpoint, a streaming task, a bad
``--input``, a task module that does not import."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config
from tests.test_custom_task import files

REPO = Path(__file__).resolve().parents[1]
FLIPFLOP = REPO / "docs" / "results" / "analysis_runs" / "flipflop"


def analyze(args, capsys):
    """``sofo-analyze`` in this process: (exit code, stdout, stderr)."""
    from sofo_lab.cli.analyze import main

    path = list(sys.path)                 # the command puts folders on sys.path: not for the next test
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.path[:] = path
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The user's folder: the docs' mylab/flipflop.py and conf/, and the trained run copied into runs/."""
    root = tmp_path_factory.mktemp("myproject")
    for name, body in files().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(body)
    (root / "mylab" / "__init__.py").write_text("")
    shutil.copytree(FLIPFLOP, root / "runs" / "flipflop")
    yield root
    for mod in [m for m in sys.modules if m == "mylab" or m.startswith("mylab.")]:
        del sys.modules[mod]


def test_analyze_a_run_of_the_users_own_task(project, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)                                  # not the project: --config-dir finds mylab
    run = project / "runs" / "flipflop"
    code, out, err = analyze([run, "--config-dir", project / "conf", "--steps", "300", "--starts", "128",
                              "--conditions", "4"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flipflop: ") and "8 stable" in lines[0], out
    assert "fixed points" in err                                  # the progress bar (stderr)
    folder = run / "analysis"
    assert {p.name for p in folder.iterdir()} == {"fixed_points.npz", "summary.json", "pca_trajectories.png",
                                                   "eigenvalues.png"}
    summary = json.loads((folder / "summary.json").read_text())
    counts = summary["counts"]
    assert counts["stable"] == 8 and counts["saddle"] >= 12 and counts["unstable"] == 0, counts
    assert summary["inputs"][0]["u"] == [0.0, 0.0, 0.0] and summary["task"] == "flipflop"
    assert len(summary["points"]) == sum(counts.values())
    for point in summary["points"]:                               # largest |λ| of each: <1 stable, >1 saddle
        assert (point["max_abs_eigenvalue"] < 1) == (point["label"] == "stable")
    with np.load(folder / "fixed_points.npz") as saved:           # numpy alone, no pickle
        M = len(summary["points"])
        assert saved["states"].shape == (M, 48) and saved["jacobians"].shape == (M, 48, 48)
        assert saved["eigenvalues"].dtype.kind == "c" and list(saved["labels"]) == [p["label"] for p in summary["points"]]
        assert saved["pcs"].shape == (M, 3) and np.all(np.diff(saved["explained_variance_ratio"]) <= 0)


def test_inputs_chosen_on_the_command_line(project, capsys, monkeypatch):
    """Held at input (1, 0, 0): every point written is a fixed point of the network's own step under it."""
    from sofo_lab.core.system import StepInput

    monkeypatch.chdir(project)
    code, out, err = analyze([project / "runs" / "flipflop", "--input", "1,0,0", "--steps", "200", "--starts",
                              "32", "--conditions", "2", "--out", project / "held", "--no-progress"], capsys)
    assert code == 0, err
    assert err == ""                                              # --no-progress: nothing on stderr
    summary = json.loads((project / "held" / "summary.json").read_text())
    assert summary["inputs"][0]["u"] == [1.0, 0.0, 0.0] and summary["counts"]["stable"] >= 1, summary["counts"]
    import sofo_lab

    run = sofo_lab.load_run(project / "runs" / "flipflop")
    with np.load(project / "held" / "fixed_points.npz") as saved:
        z, u = saved["states"], saved["inputs"]
        fixed = saved["labels"] != "slow"
    assert np.all(u == [1.0, 0.0, 0.0])
    z_next, _ = run.model.step(run.params, z, StepInput(u))
    np.testing.assert_allclose(np.asarray(z_next)[fixed], z[fixed], atol=1e-5)

    code, _, err = analyze([project / "runs" / "flipflop", "--input", "1,0"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--input='1,0': needs 3 values" in err


def _fake_run(root: Path, overrides, params: bool = True) -> Path:
    """A run directory as sofo-run leaves it (its config; params.npz unless ``params`` is false)."""
    from sofo_lab.train.assemble import build
    from sofo_lab.train.checkpoint import PARAMS_NPZ, save_params_npz

    cfg = compose_config([*overrides, "model.n_hidden=8", "logger=none"])
    (root / ".hydra").mkdir(parents=True)
    (root / "checkpoints").mkdir()
    OmegaConf.save(cfg, root / ".hydra" / "config.yaml")
    if params:
        save_params_npz(root / "checkpoints" / PARAMS_NPZ, build(cfg).system.init_params(jax.random.PRNGKey(0)))
    return root


def test_one_line_errors(tmp_path, capsys):
    cases = [
        (tmp_path / "nowhere", "is not a directory"),
        (tmp_path, "has no .hydra/config.yaml"),
        (_fake_run(tmp_path / "untrained", ["task=kalman", "optim=adam"], params=False), "has no checkpoint yet"),
        (_fake_run(tmp_path / "stream", ["task=anbn", "model=gru", "optim=uoro"]), "streaming task 'anbn'"),
    ]
    for run_dir, message in cases:
        code, out, err = analyze([run_dir], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1, (run_dir, err)
        assert err.startswith("error: ") and message in err, err
        assert not (run_dir / "analysis").exists()


def test_the_console_script_and_a_task_that_does_not_import(project, tmp_path):
    """Installed as ``sofo-analyze``; a run of the user's task analyzed from elsewhere without
    --config-dir and with its recorded working directory gone: one line naming the module."""
    exe = Path(sys.executable).with_name("sofo-analyze")
    exe = str(exe) if exe.is_file() else shutil.which("sofo-analyze")
    assert exe, "sofo-analyze is not installed (pip install -e .)"
    run = tmp_path / "copy"
    shutil.copytree(FLIPFLOP, run)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([exe, str(run)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.count("\n") == 1 and "mylab.flipflop.FlipFlop" in proc.stderr, proc.stderr
