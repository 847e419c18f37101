"""The benchmark: one module per figure, each measured next to its baseline in the same run.

Outside the runtime: nothing in ``swarm``, ``agents`` or ``model`` imports it. Run it with ``make bench`` or
``python -m bench``.
"""
