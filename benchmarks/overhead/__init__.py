"""Overhead of wandb_gradema per training step (issue 6): ``python -m benchmarks.overhead``.

Interleaved, paired timings of whole AdamW training steps against the bare step, the
bandwidth floor (one ``torch._foreach_norm``), ``clip_grad_norm_``, ``get_total_norm`` and W&B's
own ``wandb.watch(log="gradients")``; plus the monitor's memory and, with ``--profile``, where
its time goes. Not part of the installed package.
"""
