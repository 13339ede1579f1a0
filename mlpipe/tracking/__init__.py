"""MLflow: the store, runs and what they record, the registry, the served model."""
