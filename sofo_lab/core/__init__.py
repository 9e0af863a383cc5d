"""The engine's base: systems and batches, losses, errors, value checks, pytree utilities and the
Protocols a model, task or optimizer provides. Imports nothing else of sofo_lab."""
