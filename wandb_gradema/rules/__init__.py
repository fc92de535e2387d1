"""The detector's rules, one module per family of evidence.

- ``gradient``: the norm and health of the gradients (explosion, vanishing, dead units);
- ``loss``: the observed loss, on the scale of its own batch-to-batch noise (explosion, back
  above the start, progress lost, unstable rise, stalled);
- ``schedule``: the learning rate (rising, non-rising clock, jumps followed by trouble).

Each module holds the running statistics of its family (``*Stats``: updated once per step in
constant work, a handful of floats and rolling windows, checkpointed as plain values) and the
rules, pure functions of those statistics and the frozen settings (``GradientRules.judge``,
``LossView.judge``, ``judge_*``), which record into one ``Findings`` per step: the largest score,
and only the rules that fire. ``AnomalyDetector`` wires them together.
"""
