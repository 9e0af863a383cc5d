"""Runs as data, after they ran: loading a run (runs), comparing runs and sweeps (compare, its
figure and tables). Imports the engine and train, never cli."""
