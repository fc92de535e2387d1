"""The ``wandb-gradema sweep`` tool: run a W&B sweep offline with W&B's own engine.

``config`` loads and validates sweep YAMLs and builds each run's command as ``wandb agent``
does; ``trial`` launches one run and reads it back from its offline log; ``runner`` drives the
engine (``sweeps.next_run`` / ``stop_runs``); ``report`` prints the table. Needs the
``sweeps`` extra. Never imported by the monitor: pruning inside a run lives in
``wandb_gradema.pruning``.
"""
