"""Evaluating any model, dense or pruned, on a task with the metric it is known by."""
