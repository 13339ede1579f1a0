"""One module per DVC stage; each runs as `python -m stages.<name>`."""
