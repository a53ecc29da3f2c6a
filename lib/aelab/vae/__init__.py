"""Variational autoencoders, one model per file."""
