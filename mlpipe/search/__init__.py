"""Sweeps: the search a user describes, its Optuna study, and each trial a pipeline run."""
