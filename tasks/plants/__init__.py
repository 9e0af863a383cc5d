"""Plants: differentiable bodies a network controls in closed loop (the two-joint arm, arm.py).
A plant is not a task; the motor tasks (tasks/motor_common.py) wrap one with the network."""
