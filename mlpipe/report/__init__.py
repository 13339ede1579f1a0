"""What evaluate and plot make of a model: test-set metrics, tables and figures."""
