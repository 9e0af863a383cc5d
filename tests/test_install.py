"""A non-editable ``pip install .`` finds its configs from any working directory."""
import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_non_editable_install_runs_from_any_directory(tmp_path):
    # Copy the sources (not build outputs) so the build never touches the working tree.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "outputs", "*.egg-info", "__pycache__",
                                                               "build", "wandb", "multirun", "docs"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # The dependencies come from the environment pytest runs in (a fresh venv, CI's, or the base
    # interpreter's): its site-packages go on the new venv's path after the venv's own, where
    # sofo-lab is installed. (--system-site-packages would give the base interpreter's instead.)
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    here = [p for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()]
    (Path(purelib) / "_pytest_environment.pth").write_text("".join(f"{p}\n" for p in here))
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--quiet", str(src)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    shutil.rmtree(src)   # nothing may point back at the source tree

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A user's own tasks.py in the working directory must not shadow the task catalogue
    # (installed as sofo_lab.tasks): importing it would fail loudly.
    (elsewhere / "tasks.py").write_text("raise SystemExit('the user tasks.py was imported')\n")
    where = subprocess.run([str(py), "-c", "import sofo_lab.cli.run as c, sofo_lab.conf as conf, sofo_lab.tasks as tasks; "
                            "print(c.__file__); print(conf.CONF_DIR); print(tasks.__file__)"],
                           cwd=elsewhere, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    module, conf, tasks_file = where.stdout.split()
    assert str(venv) in module and str(venv) in tasks_file
    assert conf.startswith(str(venv)) and (Path(conf) / "task" / "kalman.yaml").is_file()

    run_dir = elsewhere / "run"
    out = subprocess.run([str(venv / "bin" / "sofo-run"), "iterations=2", "batch_size=2", "task.n_steps=10",
                          "model.n_hidden=4", "logger=none", "progress=false", "plots=false",
                          f"hydra.run.dir={run_dir}"], cwd=elsewhere, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
