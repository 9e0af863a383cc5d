"""``task=reach``: delayed center-out reaching with a two-joint arm (docs/motor.md).

Periods of one trial (seconds; CPU default dt = 10 ms, T = 180):

    idle  ~ U[idle]      hold at the start; nothing shown
    delay ~ U[delay]     the target is shown; keep holding at the start
    go                   hold signal drops to 0 and the target disappears (memory-guided reach)
    free window          no loss: move to the target
    until the end        at the target with zero velocity (weight target_weight)

Channels (plus arm feedback θ − θ_start, θ̇ added by the closed loop, tasks/plants/arm.py):

    hold        1 before the go cue, 0 after
    target_dx   target − start, in units of radius[1], during the delay only
    target_dy

Outputs: hand position and velocity (scored) and the joint torques (not scored unless
``effort_weight`` > 0). Loss, targets and metrics: tasks/motor_common.py.
"""
from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from sofo_lab.tasks.motor_common import MotorTask


class Reach(MotorTask):
    name: ClassVar[str] = "reach"
    input_names: ClassVar[tuple[str, ...]] = ("hold", "target_dx", "target_dy")
    n_moves: ClassVar[int] = 1
    # what sofo-compare draws first, with the solved criterion's thresholds (MotorTask.evaluate) as levels
    headline_metric: ClassVar[str] = "eval/within_1cm"
    references: ClassVar[dict] = {"eval/within_1cm": {"solved": MotorTask.solve_within},
                                  "eval/moved_early": {"solved": MotorTask.solve_moved_early},
                                  "eval/hold_error_cm": {"solved": MotorTask.solve_hold_cm}}

    def __init__(self, n_steps=180, dt=0.01, tau=0.02, private_noise=0.28, idle=(0.1, 0.3), delay=(0.2, 0.6),
                 free=0.5, **kwargs):
        super().__init__(n_steps=n_steps, dt=dt, tau=tau, private_noise=private_noise, idle=idle, delay=delay,
                         gap=0.0, free=free, **kwargs)

    def inputs_at(self, lat, t):
        hold = (t[:, None] < lat.go[None, :, 0]).astype(jnp.float32)   # [T', B]
        target = self.target_inputs(lat, t)[:, :, 0]                   # [T', B, 2]
        return jnp.concatenate([hold[..., None], target], axis=-1)

