"""sofo-compare, the honest time axis, per-optimizer keys, --help and the quiet console.

The unit tests build run directories by hand (exact numbers in, exact numbers out); one slow test
runs a real tiny sweep through the CLI and checks what the user sees and what the files hold.
"""
from __future__ import annotations

import csv
import json
import statistics
import warnings
from pathlib import Path

import pytest
from conftest import compose_config, run_cli
from omegaconf import OmegaConf

from sofo_lab.analysis import compare, compare_plot
from sofo_lab.cli import compare as compare_cli
from sofo_lab.cli.help import key_comments, render
from sofo_lab.core.errors import ConfigError
from sofo_lab.train import console, per_optim
from sofo_lab.train.reporting import reference_levels


TASK_CLASSES = {"kalman": "sofo_lab.tasks.kalman.Kalman", "reach": "sofo_lab.tasks.reach.Reach"}


def _run_dir(root: Path, name: str, optim: str, seed: int, losses, extra_overrides=(), times=None,
             status="completed", hydra=True, profile=None, task="kalman", logged=None):
    """A run directory as the runner writes it: metrics.jsonl, summary.json, .hydra/.
    ``logged``: more evaluated metrics, a list of values (one per evaluation) each."""
    d = root / name
    d.mkdir(parents=True)
    times = times or [0.1 * i for i in range(len(losses))]
    kalman = {"eval/oracle_mse": 0.5, "eval/copy_mse": 3.0} if task == "kalman" else {}
    hist = [{"iteration": 10 * i, "time_s": t, "eval/loss": v, "eval/mse": v, **kalman,
             **{k: values[i] for k, values in (logged or {}).items()}}
            for i, (v, t) in enumerate(zip(losses, times))]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hist))
    final = {k: v for k, v in hist[-1].items() if "/" in k and k not in kalman}
    summary = {"status": status, "final": {**final, "loss": losses[-1]},
               "profile": profile or {"step_time_median_s": 0.002, "train_time_s": times[-1], "compile_s": 1.0,
                                      "step_memory_bytes": 2**20, "n_params": 89},
               "choices": {"task": task, "model": "rnn", "optim": optim, "logger": "none"}}
    (d / "summary.json").write_text(json.dumps(summary))
    if hydra:
        (d / ".hydra").mkdir()
        overrides = [f"task={task}", f"optim={optim}", f"seed={seed}", "iterations=20", *extra_overrides]
        (d / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
        (d / ".hydra" / "hydra.yaml").write_text(OmegaConf.to_yaml(
            {"hydra": {"runtime": {"choices": {"task": task, "model": "rnn", "optim": optim,
                                               "hydra/launcher": "basic"}}}}))
        cfg = {"seed": seed, "iterations": 20, "task": {"_target_": TASK_CLASSES[task]}, "optim": {"lr": 0.1}}
        (d / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return d


def test_reference_levels_are_the_constant_keys_named_after_a_metric():
    hist = [{"eval/loss": 2.0, "eval/mse": 2.0000001, "eval/oracle_mse": 0.5, "eval/copy_mse": 3.0,
             "eval/noisy_mse": 1.0},
            {"eval/loss": 1.0, "eval/mse": 1.0, "eval/oracle_mse": 0.5, "eval/copy_mse": 3.0, "eval/noisy_mse": 0.9}]
    assert reference_levels(hist, "eval/mse") == {"oracle": 0.5, "copy": 3.0}   # noisy_mse varies: not one
    assert reference_levels(hist, "eval/loss") == {"oracle": 0.5, "copy": 3.0}  # the loss is the MSE here
    streams = [{"train/bits_per_char": b, "train/bits_per_char_recent": b - 0.1, "train/bits_per_char_optimal": 0.25}
               for b in (1.5, 1.0, 0.8)]
    assert reference_levels(streams, "train/bits_per_char") == {"optimal": 0.25}
    theta = [{"train/theta": t, "train/theta_star": -1 / 6} for t in (0.5, 0.1)]
    assert reference_levels(theta, "train/theta") == {"theta*": -1 / 6}
    assert reference_levels(theta[:1], "train/theta") == {}    # one record cannot show a constant


def test_per_optim_applies_only_to_its_optimizer_and_names_bad_keys():
    for optim, expect in (("sofo", 16), ("adam", None)):
        cfg = compose_config(["task=kalman", f"optim={optim}", "+per_optim.sofo.n_tangents=16",
                              "+per_optim.adam.lr=0.25"], return_hydra_config=True)
        out = per_optim.apply(cfg, known=["sofo", "adam", "uoro"])
        assert "per_optim" not in out
        assert out.optim.get("n_tangents") == expect
        assert out.optim.lr == (0.25 if optim == "adam" else cfg.optim.lr)
    cfg = compose_config(["task=kalman", "optim=sofo", "+per_optim.sofo.n_tangnts=16"], return_hydra_config=True)
    with pytest.raises(ConfigError, match=r"per_optim.sofo.n_tangnts=16: unknown key; optim=sofo has \["):
        per_optim.apply(cfg)
    cfg = compose_config(["task=kalman", "optim=sofo", "+per_optim.sofoo.n_tangents=16"], return_hydra_config=True)
    with pytest.raises(ConfigError, match="per_optim.sofoo=.*unknown optimizer; per_optim takes one of"):
        per_optim.apply(cfg, known=["adam", "sofo"])
    raw = ["optim=adam", "seed=1", "+per_optim.sofo.n_tangents=16", "+per_optim.adam.lr=3e-3"]
    assert per_optim.effective_overrides(raw, "adam") == ["optim=adam", "seed=1", "optim.lr=3e-3"]
    assert per_optim.effective_overrides(raw, "sofo") == ["optim=adam", "seed=1", "optim.n_tangents=16"]


def test_compare_groups_by_what_differs_pools_seeds_and_writes_exact_tables(tmp_path):
    sweep = tmp_path / "sweep"
    k = ["+per_optim.sofo.n_tangents=16"]
    _run_dir(sweep, "0", "sofo", 0, [3.0, 1.0, 0.6], k, times=[0.0, 0.2, 0.4])
    _run_dir(sweep, "1", "sofo", 1, [3.2, 1.4, 0.8], k, times=[0.0, 0.4, 0.6])
    _run_dir(sweep, "2", "adam", 0, [3.1, 2.0, 1.5], k)
    _run_dir(sweep, "3", "adam", 1, [3.3, 2.2, 1.9], k, status="diverged")
    written = compare.compare([sweep])
    assert written["figures"] == [str(sweep / "compare.png")] and (sweep / "compare.png").stat().st_size > 10_000
    rows = {r["configuration"]: r for r in written["rows"]}
    assert list(rows) == ["optim=sofo optim.n_tangents=16", "optim=adam"]    # K only on SOFO's rows
    sofo, adam = rows["optim=sofo optim.n_tangents=16"], rows["optim=adam"]
    assert sofo["eval/loss_mean"] == pytest.approx(0.7, abs=1e-12)
    assert sofo["eval/loss_sd"] == pytest.approx(statistics.stdev([0.6, 0.8]), abs=1e-12)
    assert (adam["n_runs"], adam["n_completed"], adam["status"]) == (2, 1, "1 completed 1 diverged")
    assert adam["seeds"] == "0 1"
    with open(sweep / "compare.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["optim.n_tangents"] for r in table] == ["16", ""]
    md = (sweep / "compare.md").read_text()
    assert "| optim=sofo optim.n_tangents=16 | 2/2 (0 1) | 0.7 ± 0.14 | 2 ± 0 | 0.5 |" in md
    assert "Reference levels of eval/loss: oracle 0.5, copy 3." in md
    # the curve: mean and min-max over seeds at each iteration, time = mean time_s
    runs = [compare.load_run(d, build=False) for d in compare.find_runs([sweep])]
    group = next(g for g in compare.group_runs(runs) if g.label.startswith("optim=sofo"))
    assert compare_plot.curve(group.runs, "eval/loss") == [(0, 0.0, 3.1, 3.0, 3.2), (10, pytest.approx(0.3), 1.2, 1.0, 1.4),
                                                      (20, 0.5, pytest.approx(0.7), 0.6, 0.8)]


def test_compare_reads_runs_without_hydra_files_and_separate_run_dirs(tmp_path):
    a = _run_dir(tmp_path, "runs/sofo", "sofo", 0, [2.0, 1.0], hydra=False)
    b = _run_dir(tmp_path, "runs/adam", "adam", 0, [2.0, 1.5], hydra=False)
    written = compare.compare([a, b], out=tmp_path / "out")
    assert [r["configuration"] for r in written["rows"]] == ["optim=sofo", "optim=adam"]
    assert (tmp_path / "out" / "compare.png").is_file()
    with pytest.raises(SystemExit, match="no runs"):
        compare.compare([tmp_path / "out"])


def _reach_runs(root: Path) -> Path:
    """Two SOFO seeds and one Adam run of the reach: SOFO seed 0 solved from iteration 20 on, seed 1
    solved at iteration 10 only, Adam never."""
    def logged(within, early, solved):
        return {"eval/within_1cm": within, "eval/moved_early": early, "eval/hold_error_cm": [2.0, 1.0, 0.5],
                "eval/solved": solved}

    _run_dir(root, "0", "sofo", 0, [1.0, 0.5, 0.2], task="reach", times=[0.0, 0.2, 0.4],
             logged=logged([0.1, 0.6, 0.9], [0.5, 0.2, 0.0], [0.0, 0.0, 1.0]))
    _run_dir(root, "1", "sofo", 1, [1.0, 0.4, 0.3], task="reach", times=[0.0, 0.3, 0.5],
             logged=logged([0.1, 0.85, 0.7], [0.5, 0.05, 0.0], [0.0, 1.0, 0.0]))
    _run_dir(root, "2", "adam", 0, [1.0, 0.8, 0.6], task="reach",
             logged=logged([0.0, 0.2, 0.4], [0.3, 0.2, 0.2], [0.0, 0.0, 0.0]))
    return root


def test_the_task_class_of_a_run_whose_config_names_none_is_that_of_its_task_choice(tmp_path):
    run = _run_dir(tmp_path, "0", "sofo", 0, [1.0, 0.5], task="reach")
    assert compare.task_class(compare.load_run(run, build=False)).__name__ == "Reach"
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({"seed": 0, "task": {"n_steps": 10}}))
    assert compare.task_class(compare.load_run(run, build=False)).__name__ == "Reach"   # from conf/task/reach.yaml
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({"task": {"_target_": "mylab.Missing"}}))
    assert compare.task_class(compare.load_run(run, build=False)) is None   # a user's task not importable here


def test_compare_draws_and_tabulates_more_metrics_with_the_tasks_solved_levels(tmp_path):
    import matplotlib.image

    sweep = _reach_runs(tmp_path / "sweep")
    written = compare.compare([sweep], metrics=["moved_early", "eval/hold_error_cm"], stem="motor")
    # a row per metric: loss, the task's headline (eval/within_1cm), the two asked for (3.8 in at 120 dpi)
    assert matplotlib.image.imread(written["figures"][0]).shape[0] == round(4 * 3.8 * 120)
    md = (sweep / "motor.md").read_text()
    assert ("| configuration | runs (seeds) | final eval/loss | final eval/within_1cm | final eval/moved_early "
            "| final eval/hold_error_cm | solved (seeds) | first solved at: iteration (training s) |") in md
    # the reach's solved thresholds (tasks/reach.py references), not typed in here
    for line in ("Reference levels of eval/within_1cm: solved 0.8.", "Reference levels of eval/moved_early: solved 0.1.",
                 "Reference levels of eval/hold_error_cm: solved 1."):
        assert line in md, line
    rows = {r["configuration"]: r for r in written["rows"]}
    sofo, adam = rows["optim=sofo"], rows["optim=adam"]
    assert sofo["eval/within_1cm_mean"] == pytest.approx(0.8) and sofo["eval/moved_early_n"] == 2
    # seed 0 ends solved; seed 1 was solved at iteration 10 (0.3 s) but no longer is at the end
    assert (sofo["solved_runs"], sofo["first_solved_iteration"], sofo["first_solved_time_s"]) == (1, "20 10", "0.4 0.3")
    assert "| 1/2 | 20 (0.4 s), 10 (0.3 s) |" in md
    assert (adam["solved_runs"], adam["first_solved_iteration"]) == (0, "–") and "| 0/1 | – |" in md
    with open(sweep / "motor.csv") as f:
        table = {r["configuration"]: r for r in csv.DictReader(f)}
    assert table["optim=sofo"]["solved_runs"] == "1" and float(table["optim=adam"]["eval/hold_error_cm_mean"]) == 0.5
    with pytest.raises(SystemExit, match="--metrics within_1cn: logged by no run; logged: .*eval/within_1cm"):
        compare.compare([sweep], metrics=["within_1cn"])


def test_compare_command_takes_metrics_and_tables_without_solved_stay_as_they_were(tmp_path, capsys):
    sweep = _reach_runs(tmp_path / "reach")
    compare_cli.main([str(sweep), "--metrics", "hold_error_cm"])
    out = capsys.readouterr().out
    assert "| final eval/loss | final eval/within_1cm | final eval/hold_error_cm | solved (seeds) |" in out
    kalman = tmp_path / "kalman"
    _run_dir(kalman, "0", "sofo", 0, [2.0, 1.0])
    compare_cli.main([str(kalman)])
    assert "solved" not in capsys.readouterr().out          # the task logs no eval/solved: no such columns
    with pytest.raises(SystemExit) as exit_:
        compare_cli.main(["--help"])
    page = " ".join(capsys.readouterr().out.split())     # argparse wraps to the terminal's width
    assert exit_.value.code == 0 and "--metrics M1,M2" in page and "eval/<name> when logged" in page


def test_after_sweep_never_raises(tmp_path, capsys):
    compare.after_sweep(tmp_path)   # no runs at all
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: sofo-compare could not compare the sweep")


def test_warnings_are_one_line_without_source():
    assert console.one_line_warning("bad\n  value", UserWarning, "/x/y.py", 12, "src line") == \
        "warning: bad value (UserWarning)\n"
    console.install()
    assert warnings.formatwarning is console.one_line_warning


def test_help_describes_groups_and_the_chosen_keys():
    page = render(["task=reach", "optim=adam"])
    assert page.startswith("sofo-run trains a recurrent network")
    assert "  sofo-run [group=option ...] [key=value ...]" in page
    for line in ("    * reach ", "      kalman ", "    * basic ", "      local_parallel ", "      slurm ",
                 "task=reach keys (task.KEY=value):", "optim=adam keys (optim.KEY=value):"):
        assert line in page, line
    reach = [ln for ln in page.splitlines() if ln.strip().startswith("task.n_steps = 180")]
    assert reach and "T: 1.8 s at dt = 10 ms" in reach[0]
    assert "optim.n_tangents" not in page            # Adam's page lists Adam's keys
    assert "seed = 0" in page and "everything (init, batches, noise, tangents) derives from it" in page


def test_help_describes_a_users_own_config_dir(tmp_path):
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "flipflop.yaml").write_text("# Flip-flop memory, my own task.\n_target_: mylab.FlipFlop\n"
                                                     "n_steps: 50   # trial length\n")
    page = render(["--config-dir", str(tmp_path), "task=flipflop"])
    assert "    * flipflop      Flip-flop memory, my own task." in page
    assert "  task.n_steps = 50  trial length" in page


def test_key_comments_follow_nesting(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("# head\n_target_: a.B\nlr: 0.1   # step size\nschedule:\n  name: cos  # which\n  alpha: 2\n"
                 "tag: 'a # not a comment'\n")
    assert key_comments(f) == {"lr": "step size", "schedule": "", "schedule.name": "which", "schedule.alpha": "",
                               "tag": ""}


@pytest.mark.slow
def test_real_sweep_compares_itself_with_honest_time_and_a_quiet_console(tmp_path):
    sweep = tmp_path / "sw"
    args = ["-m", "task=kalman", "optim=sofo,adam", "seed=0,1", "iterations=6", "batch_size=4", "task.n_steps=12",
            "model.n_hidden=8", "eval_every=3", "log_every=3", "checkpoint_every=3", "logger=wandb",
            "+per_optim.sofo.n_tangents=8", f"hydra.sweep.dir={sweep}"]
    # seed 1 reuses seed 0's compilations (same shapes) through the session's persistent JAX cache (conftest)
    r = run_cli(args, cwd=tmp_path, env={"WANDB_MODE": "offline"})
    assert r.returncode == 0, r.stderr[-3000:]
    wandb_lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("wandb:")]
    assert len(wandb_lines) == 4 and all("offline run; upload it with: wandb sync" in ln for ln in wandb_lines)
    assert "Comparison: compare.png, compare.md, compare.csv" in r.stderr
    rows = {row["configuration"]: row for row in csv.DictReader(open(sweep / "compare.csv"))}
    assert set(rows) == {"optim=sofo optim.n_tangents=8", "optim=adam"}
    assert all(row["n_completed"] == "2" for row in rows.values())
    summary = {row["optim"]: row for row in csv.DictReader(open(sweep / "sweep_summary.csv"))}
    assert summary["sofo"]["optim.n_tangents"] == "8" and summary["adam"]["optim.n_tangents"] == ""
    for run in sorted(p for p in sweep.iterdir() if p.name.isdigit()):
        hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert hist[0]["iteration"] == 0 and hist[0]["time_s"] == 0.0 and "eval/loss" in hist[0]
        assert [h["iteration"] for h in hist] == [0, 3, 6]
        prof = json.loads((run / "summary.json").read_text())["profile"]
        assert hist[-1]["time_s"] == pytest.approx(prof["train_time_s"], abs=1e-3)
        assert prof["eval_time_s"] > 0 and prof["checkpoint_time_s"] > 0 and prof["eval_compile_s"] > 0
        log = (run / "sofo.log").read_text()
        assert f"Run directory: {run}" in log and "Profile:" in log
    cfg = json.loads((sweep / "0" / "summary.json").read_text())
    assert cfg["status"] == "completed"
    out = r.stdout.strip().splitlines()
    assert out[-1].startswith("wandb: offline run; upload it with: wandb sync ")
    assert out[-2].startswith("Profile:")


def test_checkpoint_and_evaluation_time_stay_out_of_time_s(tmp_path, monkeypatch):
    """A checkpoint that takes 1000 s (on a clock it moves forward, no sleep) must not appear in
    time_s: it goes to checkpoint_time_s. No wall-clock bound: four tiny updates are far from 1000 s
    however loaded the machine."""
    import time

    from sofo_lab.train import checkpoint, trainer

    save, real, skipped = checkpoint.save, time.perf_counter, [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real() + skipped[0])

    def slow_save(*a, **kw):
        skipped[0] += 1000.0
        return save(*a, **kw)

    monkeypatch.setattr(checkpoint, "save", slow_save)
    cfg = compose_config(["task=kalman", "optim=adam", "iterations=4", "batch_size=4", "task.n_steps=12",
                          "model.n_hidden=8", "logger=none", "progress=false", "plots=false", "log_every=1",
                          "eval_every=2", "checkpoint_every=1"])
    summary = trainer.train(cfg, tmp_path / "run", {"task": "kalman", "optim": "adam"})
    hist = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in hist] == [0, 1, 2, 3, 4]
    assert hist[0]["time_s"] == 0.0 and set(hist[0]) == {"iteration", "time_s", "eval/loss", "eval/mse",
                                                        "eval/oracle_mse", "eval/copy_mse"}
    prof = summary["profile"]
    assert prof["checkpoint_time_s"] >= 4 * 1000
    assert hist[-1]["time_s"] < 1000                # four tiny updates; no checkpoint inside
    assert all(b["time_s"] >= a["time_s"] for a, b in zip(hist, hist[1:]))


def test_compare_at_an_iteration_or_a_second_reads_every_run_there(tmp_path, capsys):
    sweep = _reach_runs(tmp_path / "sweep")
    _run_dir(sweep, "3", "adam", 1, [1.0, 0.7], task="reach", status="diverged",
             logged={"eval/within_1cm": [0.0, 0.3], "eval/solved": [0.0, 0.0]})
    written = compare.compare([sweep], at=("iteration", 10), stem="at10")
    rows = {r["configuration"]: r for r in written["rows"]}
    sofo, adam = rows["optim=sofo"], rows["optim=adam"]
    # iteration 10: SOFO's second evaluation (0.6 and 0.85 within 1 cm; seed 1 solved there)
    assert sofo["eval/within_1cm_mean"] == pytest.approx(0.725) and sofo["eval/loss_mean"] == pytest.approx(0.45)
    assert sofo["solved_runs"] == 1 and sofo["ended_before"] == ""
    assert adam["eval/loss_mean"] == pytest.approx(0.75) and adam["ended_before"] == ""
    md = (sweep / "at10.md").read_text()
    assert "| eval/loss at iteration 10 | eval/within_1cm at iteration 10 |" in md
    assert "each run's last evaluation at or before iteration 10" in md
    # at 0.45 training seconds: SOFO seed 0 is at its third evaluation (0.4 s), seed 1 at its second
    # (0.3 s); Adam's runs log 0.1 s per evaluation: both ended before 0.45 s (seed 1 diverged)
    written = compare.compare([sweep], at=("seconds", 0.45), stem="at045")
    rows = {r["configuration"]: r for r in written["rows"]}
    assert rows["optim=sofo"]["eval/within_1cm_mean"] == pytest.approx((0.9 + 0.85) / 2)
    assert rows["optim=adam"]["eval/within_1cm_mean"] == pytest.approx((0.4 + 0.3) / 2)
    assert rows["optim=adam"]["ended_before"] == "0 (completed), 1 (diverged)"
    assert "optim=adam: seeds 0 (completed), 1 (diverged) ended before 0.45 s: their last evaluation is read." in (
        sweep / "at045.md").read_text()
    compare_cli.main([str(sweep), "--at", "seconds=0.45", "--out", str(tmp_path / "cli")])
    assert "eval/loss at 0.45 s" in capsys.readouterr().out
    for bad in ("iterations=10", "seconds=-1", "iteration=ten"):
        with pytest.raises(SystemExit, match=f"--at {bad}: expected iteration=N or seconds=S"):
            compare_cli.main([str(sweep), "--at", bad])
