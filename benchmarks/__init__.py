"""Benchmarks of wandb_gradema (not part of the installed package)."""
