"""Sweep benchmark: whole sweeps replayed side by side through run-vs-siblings pruners.

``space`` draws the issue-17 random search (24 configs of a 10-class digits MLP) per sweep seed
and trains each config once (cached, via the detection benchmark's trainer); ``replay`` runs a
sweep's traces in random orders through: per-run rules only, sweep-aware (per-run + siblings),
W&B's hyperband (``sweeps.stop_runs``) and Optuna's MedianPruner / WilcoxonPruner; ``__main__``
prints the table. See README.md.
"""
