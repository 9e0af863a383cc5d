"""The Trainer and the thin ``sofo-run`` (issue 20, item 2), in-process: a logger and a callback of
the user's own, each run built once, one-line errors for ``experiment=null`` and a misspelt key,
Hydra's flags read without Hydra's private parser."""
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, compose_config

KALMAN = ["task=kalman", "optim=adam"]
QUIET = [a for a in TINY if not a.startswith("logger=")]

USER_LOGGER = '''
import json
from pathlib import Path


class JsonLines:
    """A logger of the user's own: each record as one JSON line in <run dir>/<filename>."""

    def __init__(self, filename: str = "mine.jsonl"):
        self.filename = filename

    def start(self, run):
        self.file = open(Path(run.run_dir) / self.filename, "a")

    def log(self, record):
        self.file.write(json.dumps(record) + "\\n")

    def finish(self, summary):
        self.file.close()
        return f"mine: {summary['status']} ({self.filename})"
'''


@pytest.fixture
def user_project(tmp_path, monkeypatch):
    """A project outside the package: its logger module on sys.path, its logger configs in conf/."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "mylog.py").write_text(USER_LOGGER)
    (tmp_path / "conf" / "logger").mkdir(parents=True)
    (tmp_path / "conf" / "logger" / "mine.yaml").write_text("_target_: mylog.JsonLines\nfilename: mine.jsonl\n")
    (tmp_path / "conf" / "logger" / "both.yaml").write_text(
        "defaults:\n  - mine@first\n  - mine@second\nsecond:\n  filename: second.jsonl\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_users_logger_gets_every_record_through_sofo_run(user_project, sofo_run_here):
    conf, run = user_project / "conf", user_project / "run"
    out = sofo_run_here(["--config-dir", str(conf), "logger=mine", "logger.filename=mine.jsonl", *KALMAN, *QUIET,
                         f"hydra.run.dir={run}"], cwd=user_project)
    assert out.returncode == 0, out.stderr
    metrics = _lines(run / "metrics.jsonl")
    assert [r["iteration"] for r in metrics] == [0, 1, 2, 3] and _lines(run / "mine.jsonl") == metrics
    assert "mine: completed (mine.jsonl)" in (run / "sofo.log").read_text()
    # several loggers, composed as in lightning-hydra-template (logger/both.yaml: mine@first, mine@second)
    both = user_project / "both"
    out = sofo_run_here(["--config-dir", str(conf), "logger=both", *KALMAN, *QUIET, f"hydra.run.dir={both}"],
                        cwd=user_project)
    assert out.returncode == 0, out.stderr
    assert _lines(both / "mine.jsonl") == _lines(both / "second.jsonl") == _lines(both / "metrics.jsonl")
    # its keys are checked like the package's, before anything is written
    out = sofo_run_here(["--config-dir", str(conf), "logger=mine", "+logger.filenme=x", *KALMAN, *QUIET,
                         f"hydra.run.dir={user_project / 'bad'}"], cwd=user_project)
    (line,) = out.stderr.strip().splitlines()
    assert out.returncode == 2
    assert line.startswith("error: logger.filenme='x': unknown key (did you mean logger.filename?)"), line
    assert not (user_project / "bad").exists()


def test_each_run_is_built_once(tmp_path, monkeypatch, sofo_run_here):
    """The pre-check's build is the one the run trains: build, per_optim.apply and check_shapes
    once per run, for a single run and for each run of a sweep under the basic launcher."""
    from sofo_lab.train import per_optim, resources, trainer

    calls = {"build": 0, "apply": 0, "check_shapes": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(trainer, "build", counted("build", trainer.build))
    monkeypatch.setattr(per_optim, "apply", counted("apply", per_optim.apply))
    monkeypatch.setattr(resources, "check_shapes", counted("check_shapes", resources.check_shapes))
    out = sofo_run_here([*KALMAN, *TINY, f"hydra.run.dir={tmp_path / 'one'}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert calls == {"build": 1, "apply": 1, "check_shapes": 1}
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["status"] == "completed"
    calls.update(build=0, apply=0, check_shapes=0)
    out = sofo_run_here(["-m", *KALMAN, *TINY, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert calls == {"build": 2, "apply": 2, "check_shapes": 2}
    assert all((tmp_path / "sweep" / str(i) / "summary.json").is_file() for i in (0, 1))


@pytest.mark.parametrize("args,start", [
    (["experiment=null"], "error: experiment='null': a config group takes a config name, not null; choose one of"),
    (["optim.lrr=0.1"], "error: optim.lrr='0.1': unknown key (did you mean optim.lr?); optim has"),
])
def test_bad_input_ends_in_one_line(tmp_path, sofo_run_here, args, start):
    out = sofo_run_here([*KALMAN, *args], cwd=tmp_path)
    err = out.stderr
    assert out.returncode == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith(start), err
    assert not list(tmp_path.iterdir())


def test_the_flags_read_before_hydra_are_hydras():
    """cli/command.py reads Hydra's flags with a public parser of its own; they must stay Hydra's."""
    from hydra._internal.utils import get_args_parser   # the test may look inside Hydra; the package does not

    from sofo_lab.cli.command import flags_first, parser

    def flags(p):
        return {tuple(sorted(a.option_strings)) for a in p._actions if a.option_strings}

    assert flags(parser()) == flags(get_args_parser())
    assert flags_first(["task=reach", "-m", "seed=0,1", "-cn", "config"]) == ["-m", "-cn", "config", "task=reach",
                                                                             "seed=0,1"]


def test_a_callback_of_ones_own_sees_every_step(tmp_path):
    from sofo_lab.train.callbacks import Callback
    from sofo_lab.train.trainer import Trainer, default_callbacks, prepare

    class Count(Callback):
        every = 2   # wants the state at every 2nd update

        def __init__(self):
            self.seen, self.states, self.ended = [], [], None

        def on_step(self, trainer, step):
            self.seen.append(step.done)
            if step.done % 2 == 0:
                self.states.append(int(step.state.iteration))

        def on_end(self, trainer, summary):
            self.ended = summary["status"]
            summary["final"]["mine"] = len(self.seen)

    cfg = compose_config([*KALMAN, *TINY, "iterations=4", "steps_per_dispatch=2", "eval_every=4",
                          "checkpoint_every=4"])
    count = Count()
    summary = Trainer(prepare(cfg), tmp_path / "run", callbacks=[*default_callbacks(cfg), count]).fit()
    assert count.seen == [0, 1, 2, 3, 4] and count.states == [0, 2, 4] and count.ended == "completed"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["final"]["mine"] == 5 == summary["final"]["mine"]


DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"


def _doc_section(heading: str) -> str:
    return re.split(r"^## ", DOC.read_text().split(heading, 1)[1], flags=re.M)[0]


def test_the_docs_loggers_run_as_written(tmp_path, monkeypatch, sofo_run_here):
    """docs/library.md, "Your own logger from the command line": its files in a project outside the
    package, each of its sofo-run lines run there (tiny sizes appended)."""
    section = _doc_section("## Your own logger from the command line")
    (tmp_path / "mylab").mkdir()
    (tmp_path / "mylab" / "__init__.py").write_text("")
    for lang, body in re.findall(r"^```(\w+)\n(.*?)^```", section, flags=re.S | re.M):
        first = body.splitlines()[0]
        if lang in ("python", "yaml") and first.startswith("# "):
            path = tmp_path / first[2:].split(":")[0].strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
    commands = [shlex.split(line)[1:] for line in re.findall(r"^sofo-run .*$", section, flags=re.M)]
    assert len(commands) == 2 and {"logger=csv", "logger=wandb_csv"} <= {a for c in commands for a in c}
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for name in [m for m in sys.modules if m == "mylab" or m.startswith("mylab.")]:
        monkeypatch.delitem(sys.modules, name)   # another test's project may have imported its own mylab
    for i, args in enumerate(commands):
        run = tmp_path / f"run{i}"
        out = sofo_run_here([*args, *QUIET, f"hydra.run.dir={run}"], cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        metrics = _lines(run / "metrics.jsonl")
        csv_name = "metrics.csv" if i == 0 else "all.csv"
        rows = (run / csv_name).read_text().splitlines()
        assert rows[0] == "iteration,time_s,metric,value"
        assert len(rows) - 1 == sum(len(r) - 2 for r in metrics)
        assert f"csv: {csv_name} in the run directory" in (run / "sofo.log").read_text()
        final = json.loads((run / "summary.json").read_text())["final"]
        if "callbacks=best" in args:   # the user's callback, after the built-in ones
            best = min((r["eval/loss"], r["iteration"]) for r in metrics if "eval/loss" in r)
            assert (final["best/eval_loss"], final["best/iteration"]) == best
    try:
        import tensorboardX  # noqa: F401
    except ImportError:   # the guarded import: one line, exit 2, nothing written
        out = sofo_run_here(["--config-dir", "conf", "logger=tensorboard", *KALMAN, *QUIET, "hydra.run.dir=tb"],
                            cwd=tmp_path)
        (line,) = out.stderr.strip().splitlines()
        assert out.returncode == 2
        assert line.startswith("error: logger='mylab.tblog.TensorBoardLogger': could not be built") and \
            "pip install tensorboardX" in line, line
        assert not (tmp_path / "tb").exists()
