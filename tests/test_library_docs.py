"""Every ```python block of docs/library.md (before the command-line section) runs as written.

Each ``##`` section runs on its own, its blocks in order in one namespace, in a temporary working
directory; the reach PCA section reads ``runs/reach``, which the fixture trains (tiny) first.
"""
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"
OTHERS = "## Your own task from the command line"   # the other part of the page, tested elsewhere


def sections() -> dict[str, list[str]]:
    text = DOC.read_text().split(OTHERS)[0]
    out, current = {}, None
    for part in re.split(r"^(## .*)$", text, flags=re.M):
        if part.startswith("## "):
            current = part[3:].strip()
        elif current is not None:
            blocks = re.findall(r"^```python\n(.*?)^```", part, flags=re.S | re.M)
            if blocks:
                out[current] = blocks
    return out


SECTIONS = sections()


def test_the_page_has_the_examples_it_promises():
    assert len(SECTIONS) >= 5, list(SECTIONS)
    assert any("PCA" in name for name in SECTIONS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A temporary directory holding runs/reach as the page's bash block leaves it, minus the training
    (which tests/test_runs.py runs for real): the run's config and its params.npz."""
    import jax

    from sofo_lab.train.assemble import build
    from sofo_lab.train.checkpoint import PARAMS_NPZ, save_params_npz

    root = tmp_path_factory.mktemp("docs")
    run_dir = root / "runs" / "reach"
    cfg = compose_config(["task=reach", "model=rnn", "optim=sofo", "model.n_hidden=16", "logger=none"])
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")        # what Hydra writes for a CLI run
    save_params_npz(run_dir / "checkpoints" / PARAMS_NPZ, build(cfg).system.init_params(jax.random.PRNGKey(0)))
    return root


@pytest.mark.parametrize("name", list(SECTIONS))
def test_doc_section_runs(name, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    namespace = {"__name__": "__docs__"}
    for i, block in enumerate(SECTIONS[name]):
        exec(compile(block, f"docs/library.md [{name}] block {i + 1}", "exec"), namespace)   # raises on failure
