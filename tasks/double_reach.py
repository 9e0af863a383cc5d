"""``task=double_reach``: reach to two targets in turn (docs/motor.md).

Periods of one trial (seconds; CPU default dt = 10 ms, T = 200):

    delay ~ U[delay]       both targets shown; hold at the start (no idle period by default)
    go_1                   first hold signal drops; targets disappear
    free window            no loss: move to target 1
    until go_2             at target 1, zero velocity (weight target_weight)
    go_2 = go_1 + gap      second hold signal drops (gap = 0.7 s)
    free window            no loss: move to target 2
    until the end          at target 2, zero velocity

Channels (plus arm feedback θ − θ_start, θ̇ added by the closed loop, tasks/plants/arm.py):

    hold_1, hold_2            1 before go_1 (resp. go_2), 0 after
    target1_dx, target1_dy    target 1 − start, in units of radius[1], during the delay only
    target2_dx, target2_dy    target 2 − start, same

Both targets are drawn independently around the start (reachable by construction), so the
second movement can be up to twice the radius long. Loss and metrics: tasks/motor_common.py;
``endpoint_error1_cm``/``endpoint_error2_cm`` score the two segments.
"""
from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from sofo_lab.core.errors import ConfigError
from sofo_lab.tasks.motor_common import MotorTask


class DoubleReach(MotorTask):
    name: ClassVar[str] = "double_reach"
    input_names: ClassVar[tuple[str, ...]] = ("hold_1", "hold_2", "target1_dx", "target1_dy",
                                              "target2_dx", "target2_dy")
    n_moves: ClassVar[int] = 2
    solve_within: ClassVar[float] = 0.6
    solve_hold_cm: ClassVar[float | None] = None
    # what sofo-compare draws first, with the solved criterion's thresholds (each movement) as levels
    headline_metric: ClassVar[str] = "eval/within_1cm"
    references: ClassVar[dict] = {"eval/within_1cm1": {"solved": solve_within},
                                  "eval/within_1cm2": {"solved": solve_within},
                                  "eval/moved_early": {"solved": MotorTask.solve_moved_early}}

    def __init__(self, n_steps=200, dt=0.01, tau=0.02, private_noise=0.28, idle=(0.0, 0.0), delay=(0.2, 0.6),
                 gap=0.7, free=0.5, **kwargs):
        if isinstance(gap, (int, float)) and not isinstance(gap, bool) and gap <= free:
            raise ConfigError("task.gap", gap, f"must exceed task.free={free} (time at target 1 before go 2)")
        super().__init__(n_steps=n_steps, dt=dt, tau=tau, private_noise=private_noise, idle=idle, delay=delay,
                         gap=gap, free=free, **kwargs)

    def inputs_at(self, lat, t):
        holds = (t[:, None, None] < lat.go[None]).astype(jnp.float32)   # [T', B, 2]
        shown = self.target_inputs(lat, t)                             # [T', B, 2, 2]
        return jnp.concatenate([holds, shown.reshape(*shown.shape[:2], 4)], axis=-1)
