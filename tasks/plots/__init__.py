"""Figures of the tasks that need more than a few lines (the motor tasks' trajectories and
torques, motor.py); matplotlib is imported only when one is drawn."""
