"""Datasets: their specs, formats, download, preprocessing and the processed splits."""
