"""Keras models: architecture, training loops, sizing, distribution, loading, the NumPy pass."""
