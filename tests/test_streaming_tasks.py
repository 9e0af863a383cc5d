"""The streaming regime: generators produce exactly their grammars, windows join into one
stream, online scores, reference entropy rates, every optimizer on a stream, resume."""
import json
import math
import pickle
import shutil

import jax
import numpy as np
import pytest

from sofo_lab.tasks import anbn, brackets
from sofo_lab.tasks.anbn import AnBn
from sofo_lab.tasks.brackets import Brackets
from sofo_lab.tasks.streams import init_score, update_score
from sofo_lab.train import checkpoint
from sofo_lab.train.trainer import train
from tests.conftest import compose_config


def stream_text(task, n, batch_size=3, key=0):
    gen = task.init_gen(jax.random.PRNGKey(key), batch_size)
    _, symbols = jax.jit(lambda g, k: task.symbols(g, k, n))(gen, jax.random.PRNGKey(key + 1))
    return [task.decode(np.asarray(symbols[:, b])) for b in range(batch_size)]


def whole_lines(text, even=False):
    lines = text[: text.rindex("\n") + 1].split("\n")[:-1]
    if even and len(lines) % 2:
        lines = lines[:-1]
    return "\n".join(lines) + "\n"


def test_anbn_generator_is_the_grammar_with_uniform_n():
    task = AnBn(n_min=1, n_max=8)
    sizes = []
    for text in stream_text(task, 3000):
        sizes += anbn.parse(whole_lines(text, even=True))
    assert set(sizes) == set(range(1, 9))                       # every n in range, none outside
    assert abs(np.mean(sizes) - 4.5) < 0.4
    with pytest.raises(ValueError):
        anbn.parse("aa\nbbb\n")


@pytest.mark.parametrize("S,lo,hi,K", [(1, 5, 5, 10), (3, 2, 7, 10)])
def test_brackets_generator_is_the_grammar(S, lo, hi, K):
    task = Brackets(n_saved=S, gap_min=lo, gap_max=hi, n_symbols=K)
    assert task.vocabulary == tuple(sorted(task.vocabulary)) and len(task.vocabulary) == K + 3
    total = 0
    for text in stream_text(task, 1500):
        total += brackets.parse(whole_lines(text), S, lo, hi, K)
    assert total > 3 * 1500 / (2 * S + hi + 5) * 0.9
    with pytest.raises(ValueError):
        brackets.parse("[!]#####[\"]\n", 1, 5, 5, 10)


def test_windows_join_into_one_stream():
    task = AnBn(n_steps=7)
    data = task.init_data(jax.random.PRNGKey(0), 2)
    inputs, targets = [], []
    next_batch = jax.jit(task.next_batch, static_argnums=2)
    for i in range(40):
        data, batch = next_batch(data, jax.random.PRNGKey(i + 1), 2)
        inputs.append(np.argmax(batch.inputs, -1))
        targets.append(np.argmax(batch.targets, -1))
        np.testing.assert_allclose(np.asarray(batch.weights).sum(0), 1.0, rtol=1e-6)   # loss = mean nats/char
    inputs, targets = np.concatenate(inputs), np.concatenate(targets)
    np.testing.assert_array_equal(inputs[1:], targets[:-1])     # input = previous target, across windows
    for b in range(2):
        anbn.parse(whole_lines(task.decode(targets[:, b]), even=True))


def test_reference_rates():
    r = AnBn().reference_rates
    assert r["optimal"] == pytest.approx(5 / 35) and r["forget_n"] == pytest.approx(10 / 35)
    assert r["no_counting"] == pytest.approx(0.311, abs=5e-4)
    r = Brackets().reference_rates
    assert r["optimal"] == pytest.approx(1.661, abs=5e-4) and r["no_memory"] == pytest.approx(1.938, abs=5e-4)
    r = Brackets(n_saved=3, gap_min=2, gap_max=7).reference_rates
    assert r["optimal"] == pytest.approx(1.774, abs=5e-4) and r["no_memory"] == pytest.approx(2.417, abs=5e-4)


def test_online_scores_are_the_cumulative_mean_and_the_authors_moving_average():
    window_bits, T = [2.0, 1.0, 0.5, 0.25, 3.0, 1.5, 0.75], 4   # T/√t < 1 from t = 20 on
    score, recent = init_score(), None
    for i, bits in enumerate(window_bits):
        score = update_score(score, bits, T)
        t = (i + 1) * T
        rate = min(1.0, T / math.sqrt(t))   # the per-character rate 1/√t, T characters at a time
        recent = bits if recent is None else recent * (1 - rate) + bits * rate
    assert int(score.chars) == 28
    assert float(score.cumulative) == pytest.approx(np.mean(window_bits), rel=1e-6)
    assert float(score.recent) == pytest.approx(recent, rel=1e-6)


TINY_STREAM = ["batch_size=2", "task.n_steps=8", "model=gru", "model.n_hidden=8", "logger=none",
               "progress=false", "plots=false", "log_every=1", "checkpoint_every=2"]


@pytest.mark.parametrize("optim", ["adam", "sofo"])   # uoro, tbptt: resume test, influence runs, benchmarks
def test_every_optimizer_runs_on_a_stream(tmp_path, optim):
    extra = {"sofo": ["optim.n_tangents=8"], "tbptt": ["optim.truncation=4"]}.get(optim, [])
    summary = train(compose_config(["task=anbn", f"optim={optim}", "iterations=2", *TINY_STREAM, *extra]), tmp_path)
    final = summary["final"]
    assert summary["status"] == "completed"
    assert 0 < final["train/bits_per_char"] < 3 and final["train/bits_per_char_optimal"] == pytest.approx(5 / 35)
    assert final["train/characters"] == 16
    assert "train/bits_per_char_recent" in final


def test_resumed_stream_continues_the_same_stream_and_estimator(tmp_path):
    """A run resumed from a mid-run checkpoint ends bit-identical to an uninterrupted one:
    params, UORO's s̃/θ̃, the generators' state, the carried network state and the scores."""
    args = ["task=brackets", "optim=uoro", *TINY_STREAM, "log_geometric=1.5"]
    full = compose_config([*args, "iterations=6"])
    train(full, tmp_path / "full")
    train(compose_config([*args, "iterations=3"]), tmp_path / "half")
    with open(tmp_path / "half" / checkpoint.CHECKPOINT, "rb") as f:
        state = pickle.load(f)["state"]
    assert int(state.iteration) == 3
    from omegaconf import OmegaConf
    checkpoint.save(tmp_path / "resumed", state, OmegaConf.to_container(full, resolve=True))
    resumed = train(full, tmp_path / "resumed")
    assert resumed["resumed_from"] == 3
    ref = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert resumed["final"] == ref["final"]
    with open(tmp_path / "full" / checkpoint.CHECKPOINT, "rb") as f:
        a = pickle.load(f)["state"]
    with open(tmp_path / "resumed" / checkpoint.CHECKPOINT, "rb") as f:
        b = pickle.load(f)["state"]
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)
    assert np.any(np.asarray(a.opt_state.theta_tilde["W_h"]) != 0)   # the estimator state was carried
    # The geometric log (iterations 1, 2, 3, 4, 6 at ×1.5) continues with the same rows.
    rows = lambda d: [{k: v for k, v in json.loads(x).items() if k != "time_s"}
                      for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows("full")] == [1, 2, 3, 4, 6]
    assert rows("resumed") == [r for r in rows("full") if r["iteration"] > 3]


@pytest.mark.parametrize("task", ["brackets", "kalman"])   # a stream; an episodic task with evaluations
def test_several_updates_per_call_are_the_same_run(tmp_path, task):
    """``steps_per_dispatch=3`` (a scan of 3 updates per call, single updates where a checkpoint or
    an evaluation falls inside a call) logs the same rows and ends in the same state as one update
    per call; a run resumed with a different value continues (the key is not in the config hash)."""
    if task == "kalman":
        args = ["task=kalman", "task.n_steps=12", "model.n_hidden=6", "batch_size=2", "optim=adam",
                "logger=none", "progress=false", "plots=false", "log_every=1"]
    else:
        args = ["task=brackets", "optim=uoro", *TINY_STREAM]
    args += ["iterations=8", "checkpoint_every=5", "eval_every=4"]
    one = train(compose_config([*args, "steps_per_dispatch=1"]), tmp_path / "one")
    three = train(compose_config([*args, "steps_per_dispatch=3"]), tmp_path / "three")
    assert one["profile"]["steps_per_dispatch"] == 1 and three["profile"]["steps_per_dispatch"] == 3
    rows = lambda d: [{k: v for k, v in json.loads(x).items() if k != "time_s"}
                      for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert len(rows("one")) >= 8 and [r["iteration"] for r in rows("three")] == [r["iteration"] for r in rows("one")]
    for a, b in zip(rows("one"), rows("three")):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], rtol=1e-5, atol=1e-7)
    times = [json.loads(x)["time_s"] for x in (tmp_path / "three" / "metrics.jsonl").read_text().splitlines()]
    assert times == sorted(times)
    states = {}
    for d in ("one", "three"):
        with open(tmp_path / d / checkpoint.CHECKPOINT, "rb") as f:
            states[d] = pickle.load(f)["state"]
    assert int(states["three"].iteration) == 8
    for x, y in zip(jax.tree.leaves(states["one"]), jax.tree.leaves(states["three"])):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    # resumed from the checkpoint at 5 (kept as prev.pkl) with 3 updates per call: 6-8 in one call
    with open(tmp_path / "one" / checkpoint.PREVIOUS, "rb") as f:
        assert int(pickle.load(f)["state"].iteration) == 5
    (tmp_path / "resumed" / checkpoint.CHECKPOINT).parent.mkdir(parents=True)
    shutil.copy(tmp_path / "one" / checkpoint.PREVIOUS, tmp_path / "resumed" / checkpoint.CHECKPOINT)
    resumed = train(compose_config([*args, "steps_per_dispatch=3"]), tmp_path / "resumed")
    assert resumed["resumed_from"] == 5
    np.testing.assert_allclose(resumed["final"]["train/loss"], one["final"]["train/loss"], rtol=1e-5)


def test_geometric_logging_keeps_a_long_stream_small():
    """10⁷ characters in windows of 320: 31 250 iterations, 678 rows at ×1.01 (the authors' spacing)."""
    from sofo_lab.core.errors import ConfigError
    from sofo_lab.train.steps import log_due

    points = [i for i in range(1, 31251) if log_due(i, 10, 1.01)]
    assert len(points) == 678 and points[:3] == [1, 2, 3]
    assert max(b / a for a, b in zip(points[200:], points[201:])) < 1.015
    assert [i for i in range(1, 31) if log_due(i, 10, None)] == [10, 20, 30]
    with pytest.raises(ConfigError, match="log_geometric"):
        log_due(5, 10, 1.0)


def bench_script(name):
    """A benchmark under scripts/ as a module (they import their siblings by name)."""
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    return importlib.import_module(name)


@pytest.mark.parametrize("script", ["bench_influence", "bench_char_tasks", "bench_uoro_cost"])
def test_benchmark_quick_mode(tmp_path, script):
    out = tmp_path / f"{script}.json"
    bench_script(script).main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {"cpu", "cores", "jax", "backend"} <= set(result["machine"]) and result["quick"]
    if script == "bench_influence":
        runs = result["runs"]
        assert abs(runs["uoro seed 0"]["final_theta"] + 1 / 6) < abs(runs["tbptt-10"]["final_theta"] + 1 / 6)
        assert out.with_suffix(".png").exists()
    elif script == "bench_char_tasks":
        assert {r["method"] for r in result["runs"]} == {"uoro"}
        assert all(r["bits_per_char"] > 0 for r in result["runs"])
    else:
        assert all(r["ratio"] > 0 for r in result["rows"])
        # XLA's flop count: a UORO step does more arithmetic than a forward step, never less
        assert all(r["uoro_flops_per_step"] > r["forward_flops_per_step"] > 0 for r in result["rows"])


def test_paper_length_benchmark_quick_mode_records_resumes_and_tabulates(tmp_path, capsys):
    """bench_uoro_paper --quick: one record per run, the figure and the table; a second call
    skips the finished runs; the table's numbers are the records' curves at its columns."""
    bench = bench_script("bench_uoro_paper")
    out_dir, run_root = tmp_path / "uoro_paper", tmp_path / "runs"
    args = ["--quick", "--out-dir", str(out_dir), "--run-root", str(run_root)]
    done = bench.main(args)
    assert sorted(p.name for p in out_dir.glob("*.json")) == ["anbn-gru-tbptt-16-s0.json", "anbn-gru-uoro-s0.json"]
    assert {r["status"] for r in done} == {"completed"} and all(r["characters"] == 64 for r in done)
    assert out_dir.with_suffix(".png").exists()
    assert bench.main(args) == []                      # records exist: nothing reruns
    assert "record exists, skipped" in capsys.readouterr().out
    rows = {line.split(" | ")[2]: line for line in out_dir.with_suffix(".md").read_text().splitlines()
            if line.startswith("| anbn")}
    for record in done:
        cum, rec = bench.value_at(record, 64)
        assert (cum, rec) == tuple(record["curve"][-1][1:])
        assert f"{cum:.3f} / {rec:.3f}" in rows[record["method"]]


def test_paper_length_benchmark_reads_when_a_rate_settles():
    bench = bench_script("bench_uoro_paper")
    curve = [(100, 0.9, 0.5), (200, 0.8, 0.2), (300, 0.7, 0.4), (400, 0.6, 0.1), (500, 0.5, 0.2)]
    record = {"curve": curve, "characters": 500}
    assert bench.first_below(record, 0.3) == 400      # below at 200, back above at 300, below from 400 on
    assert bench.first_below(record, 0.05) is None
    assert bench.value_at(record, 350) == (0.7, 0.4) and bench.value_at(record, 600) is None
