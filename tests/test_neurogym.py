"""task=neurogym: a tiny fake environment with neurogym's TrialEnv interface (runs without neurogym),
and the real environments when neurogym is installed (pip install -e '.[neurogym]')."""
import importlib.util
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sofo_lab.core.errors import ConfigError
from sofo_lab.tasks.neurogym_task import NeuroGym
from sofo_lab.train.trainer import train
from tests.conftest import compose_config

HAS_NEUROGYM = importlib.util.find_spec("neurogym") is not None
FAKE = "tests.test_neurogym.FakeDecision"


class FakeDecision:
    """Two-choice decision in neurogym's TrialEnv shape: fixate (2-4 steps, random), see the evidence
    for 3 steps (the larger of two channels), answer 1 or 2 for 2 steps; label 0 (fixate) before."""

    def __init__(self, dt=100, coherence=1.0, continuous=False):
        self.dt, self.coherence, self.continuous = dt, coherence, continuous
        self.rng = np.random.RandomState(0)
        self.observation_space = SimpleNamespace(shape=(3,), name={"fixation": 0, "stimulus": [1, 2]})
        if continuous:
            self.action_space = SimpleNamespace(shape=(1,))
        else:
            self.action_space = SimpleNamespace(n=3, name={"fixation": 0, "choice": [1, 2]})

    def seed(self, seed=None):
        self.rng = np.random.RandomState(seed)

    def new_trial(self):
        n_fix = int(self.rng.randint(2, 5))
        choice = int(self.rng.randint(1, 3))
        L = n_fix + 5
        self.start_ind = {"fixation": 0, "stimulus": n_fix, "decision": n_fix + 3}
        self.end_ind = {"fixation": n_fix, "stimulus": n_fix + 3, "decision": L}
        ob = np.zeros((L, 3), np.float32)
        ob[: n_fix + 3, 0] = 1.0
        ob[n_fix:n_fix + 3, choice] = self.coherence
        ob[n_fix:n_fix + 3, 1:] += 0.3 * self.rng.randn(3, 2)
        gt = np.zeros(L, np.int64)
        gt[n_fix + 3:] = choice
        self.ob = ob
        self.gt = gt[:, None].astype(np.float32) * 0.5 if self.continuous else gt
        return {"ground_truth": choice}


def fake(**kwargs):
    return NeuroGym(env=FAKE, n_trials=kwargs.pop("n_trials", 60), **kwargs)


def test_the_pool_pads_names_weights_and_splits_the_trials():
    task = fake()
    assert task.input_names == ("fixation", "stimulus_1", "stimulus_2")
    assert task.output_names == ("fixation", "choice_1", "choice_2") and task.loss_kind == "xent"
    assert task.n_steps == 9 == task.trial_lengths.max() and task.trial_lengths.min() == 7   # null: the longest
    assert task.model_settings() == {"dt": 100.0, "tau": 100.0}
    batch = task.eval_batch(None, len(task.holdout_index))
    real = np.asarray(batch.extras.mask)
    assert np.array_equal(real.sum(0), task.trial_lengths[task.holdout_index])     # padding is not real
    assert np.all(np.asarray(batch.weights)[real == 0] == 0)
    assert float(batch.weights.sum()) == pytest.approx(len(task.holdout_index) * real.sum() /
                                                       task.trial_lengths.mean() / real.shape[1], rel=1e-5)
    assert not set(task.train_index) & set(task.holdout_index) and len(task.holdout_index) == 12
    heavy = fake(decision_weight=5.0)
    b = heavy.eval_batch(None, 12)
    dec = np.asarray(b.extras.aux["decision"])
    w = np.asarray(b.weights)
    assert np.allclose(w[dec > 0], 5 * w[(dec == 0) & (np.asarray(b.extras.mask) > 0)].max())
    # a pure function of the key, inside jit or not
    key = jax.random.PRNGKey(1)
    np.testing.assert_array_equal(task.sample(key, 8).inputs, jax.jit(lambda k: task.sample(k, 8))(key).inputs)
    np.testing.assert_array_equal(task.sample(key, 8).targets, fake().sample(key, 8).targets)


def test_accuracy_metrics_in_closed_form():
    task = fake()
    batch = task.eval_batch(None, 16)                       # 12 held-out trials, 4 padding repeats
    perfect = {k: float(v) for k, v in task.evaluate(batch, batch.targets * 10.0).items()}
    assert perfect["accuracy"] == perfect["response_accuracy"] == perfect["fixation_accuracy"] == 1.0
    fixate = jnp.zeros_like(batch.targets).at[..., 0].set(10.0)   # never answers
    never = {k: float(v) for k, v in task.evaluate(batch, fixate).items()}
    assert never["accuracy"] == never["response_accuracy"] == never["decision_step_accuracy"] == 0.0
    assert never["fixation_accuracy"] == 1.0
    truth = np.asarray(batch.extras.aux["labels"])[np.asarray(batch.extras.aux["last_decision"][0]), np.arange(16)]
    counts = np.bincount(truth[:12], minlength=3)
    assert never["chance_accuracy"] == pytest.approx(counts.max() / 12)
    wrong = jnp.roll(batch.targets, 1, axis=-1) * 10.0        # answers early (during fixation) and wrongly
    assert float(task.evaluate(batch, wrong)["accuracy"]) == 0.0


def test_errors_are_one_line():
    cases = [
        (dict(decision_periods=["response"]), "task.decision_periods", "it has ['fixation', 'stimulus', 'decision']"),
        (dict(kwargs={"bogus": 1}), "task.kwargs", "does not take them"),
        (dict(n_steps=5), "task.n_steps", "cuts every trial"),
        (dict(holdout=0.001), "task.holdout", "leaves no held-out"),
        (dict(n_trials=1), "task.n_trials", ">= 2"),
    ]
    for kwargs, key, text in cases:
        with pytest.raises(ConfigError) as info:
            fake(**kwargs)
        assert info.value.key == key and text in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="cannot be imported"):
        NeuroGym(env="tests.test_neurogym.Nope")
    with pytest.warns(UserWarning, match="of 60 trials are longer and are cropped"):
        assert fake(n_steps=8).n_steps == 8


@pytest.mark.skipif(HAS_NEUROGYM, reason="neurogym is installed: the missing-package message cannot show")
def test_without_neurogym_one_line_says_what_to_install():
    with pytest.raises(ConfigError) as info:
        NeuroGym(env="PerceptualDecisionMaking-v0")
    assert "pip install -e '.[neurogym]'" in str(info.value) and "\n" not in str(info.value)


def test_a_continuous_action_space_trains_with_mse():
    task = fake(kwargs={"continuous": True})
    assert task.loss_kind == "mse" and task.output_names == ("action_0",)
    batch = task.eval_batch(None, 12)
    assert float(task.evaluate(batch, batch.targets)["mse"]) == 0.0


TINY_RUN = ["task=neurogym", f"task.env={FAKE}", "task.n_trials=200", "model.n_hidden=16", "batch_size=16",
            "eval_batch_size=40", "logger=none", "progress=false", "log_every=50", "checkpoint_every=100"]


def test_adam_learns_the_fake_environment_end_to_end(tmp_path):
    summary = train(compose_config([*TINY_RUN, "optim=adam", "optim.lr=1e-2", "iterations=150", "eval_every=150"]),
                    tmp_path / "run")
    final = summary["final"]
    assert final["eval/accuracy"] >= 0.9 > final["eval/chance_accuracy"] + 0.2   # chance ≈ 0.5
    assert (tmp_path / "run" / "neurogym_trials.png").stat().st_size > 10_000


def test_fresh_trials_are_new_every_batch_and_a_function_of_seed_and_iteration(tmp_path):
    """task.fresh: each training batch is B new environment trials, made on the host from (task.seed,
    seed, iteration), weighted like the pool's trials; a run with them learns and resumes."""
    task = fake(fresh=True)
    pool_trials = {np.asarray(task.trials([i]).inputs)[:, 0].tobytes() for i in range(task.n_trials)}
    a, b = task.host_batch(0, 3, 8), task.host_batch(0, 3, 8)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert not np.array_equal(a.inputs, task.host_batch(0, 4, 8).inputs)
    assert not np.array_equal(a.inputs, task.host_batch(1, 3, 8).inputs)
    assert a.inputs.shape == (task.n_steps, 8, 3) and a.targets.shape == (task.n_steps, 8, 3)
    assert not {a.inputs[:, j].tobytes() for j in range(8)} & pool_trials      # not the pool's trials
    pooled = fake().host_batch(0, 3, 8)
    assert pooled.inputs[:, 0].tobytes() in pool_trials
    # the same normalization as the pool: the mean weight per trial is 1 for both
    assert a.weights.sum(0).mean() == pytest.approx(1.0, rel=0.2) and pooled.weights.sum(0).mean() == pytest.approx(1.0, rel=0.2)
    with pytest.raises(ConfigError, match="task.fresh"):
        fake(fresh="yes")
    summary = train(compose_config([*TINY_RUN, "task.fresh=true", "optim=adam", "optim.lr=1e-2", "iterations=150",
                                    "eval_every=150", "plots=false"]), tmp_path / "fresh")
    assert summary["final"]["eval/accuracy"] >= 0.9


@pytest.mark.skipif(not HAS_NEUROGYM, reason="neurogym is not installed (pip install -e '.[neurogym]')")
def test_real_neurogym_environments_build_and_train(tmp_path):
    for env, kwargs, n_in in [("PerceptualDecisionMaking-v0", None, 3), ("DelayMatchSample-v0", None, 3),
                              ("ContextDecisionMaking-v0", {"use_expl_context": True}, 7)]:
        task = NeuroGym(env=env, kwargs=kwargs, n_trials=40)
        assert task.n_inputs == n_in and task.output_names[0] == "fixation" and task.dt == 100.0
        assert "decision" in task.period_names
    summary = train(compose_config(["task=neurogym", "task.n_trials=40", "model.n_hidden=8", "batch_size=4",
                                    "eval_batch_size=8", "iterations=2", "eval_every=2", "logger=none",
                                    "progress=false", "plots=false", "optim=adam"]), tmp_path)
    assert 0.0 <= summary["final"]["eval/accuracy"] <= 1.0
