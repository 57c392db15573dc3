"""Neuron masks, selection operators and the one-shot pruning pipeline."""
