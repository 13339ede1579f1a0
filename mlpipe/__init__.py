"""Shared code of the pipeline: configuration, datasets, models, tracking, atomic IO, figures."""
