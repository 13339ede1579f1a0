"""The pipeline's library: shared core here, one subpackage per layer, the commands users type.

Layers, lowest first (checked by import-linter, `make lint`): core (errors, atomic, paths,
runner), config, data, then model | tracking | report (which never import each other),
inference, and the commands predict, ui and team. Every `__init__.py` stays empty.
"""
