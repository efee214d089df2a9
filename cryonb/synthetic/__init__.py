"""Synthetic data: density maps of atomic models and simulated particle stacks."""
