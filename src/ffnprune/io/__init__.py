"""Saving and loading: atomic writes, the pruned-model directory, its self-contained modelling file."""
