"""Plumbing shared by the framework adapters: option checks, instance patches, prune-to-stop.

Nothing here decides anything about gradients; it only lets an adapter build the same monitor
``wandb_gradema.watch()`` builds and call it at the right moment of a framework's loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._patch import InstancePatch, undo_all
from .._validate import check_run, reject_unknown
from ..errors import RunPruned
from ..options import WATCH_OPTIONS, build_options
from ..wrappers import unwrap_optimizer

__all__ = ["InstancePatch", "PruneStop", "check_options", "undo_all", "unwrap_optimizer"]


def check_options(where: str, options: Mapping[str, Any], reserved: Mapping[str, str]) -> None:
    """Validate ``watch()`` options now, with ``watch()``'s own checks and messages.

    Why: an adapter builds its monitor when training starts; a typo should fail when the adapter
    is created, not minutes later. ``reserved`` maps the options the adapter sets itself to the
    reason, which the error repeats.

    Raises:
        TypeError: an option is unknown, reserved or mistyped.
        ValueError: an option is out of range.
    """
    for name, why in reserved.items():
        if name in options:
            raise TypeError(f"{where} sets `{name}` itself ({why}); do not pass it.")
    reject_unknown(where, options, [n for n in ("run", *WATCH_OPTIONS) if n not in reserved])
    check_run(options.get("run"))
    build_options({k: v for k, v in options.items() if k != "run"})  # watch()'s own checks


class PruneStop:
    """The prune-to-stop plumbing a framework adapter shares: catch, remember, stop, re-raise.

    Why: inside a framework's loop a ``RunPruned`` raised from ``optimizer.step()`` must not
    escape (it would abort the framework mid-step); the adapter catches it, stops the loop its
    own way (``on_stop``) and lets the script end as ``watch()`` would with ``check_pruned()``.

    Args:
        on_stop: called once, with the first ``RunPruned``, to stop the framework's loop.
    """

    def __init__(self, on_stop: Callable[[RunPruned], None]) -> None:
        self._on_stop = on_stop
        #: The ``RunPruned`` that stopped training, or None.
        self.pruned: RunPruned | None = None

    def reset(self) -> None:
        """A new fit / train() starts."""
        self.pruned = None

    def wrap(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """An ``InstancePatch`` wrapper: call ``original``; a prune stops instead of raising."""
        try:
            return original(*args, **kwargs)
        except RunPruned as pruned:
            self.stop(pruned)
            return None

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (e.g. ``monitor.remove``); a prune stops instead of raising."""
        return self.wrap(fn)

    def stop(self, pruned: RunPruned) -> None:
        """Remember the prune and stop the loop (once)."""
        if self.pruned is None:
            self.pruned = pruned
            self._on_stop(pruned)

    def check_pruned(self) -> None:
        """Raise the ``RunPruned`` that stopped training, if any (it exits with status 0)."""
        if self.pruned is not None:
            raise self.pruned
