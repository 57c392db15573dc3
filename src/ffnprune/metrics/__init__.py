"""Metrics over model outputs."""
