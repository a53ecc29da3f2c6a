"""Deterministic autoencoders (lecture 01)."""
