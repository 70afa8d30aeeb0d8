"""Probes: checkpoint, GPU, progress."""
