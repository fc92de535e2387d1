"""InternalErrors: monitor internals never stop training; their errors are counted, warned once."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from .errors import EscalationError, GrademaWarning, RunPruned, warn

__all__ = ["InternalErrors"]

#: Exceptions that are decisions, never internal errors: they pass through. A GrademaWarning
#: raised as an exception is user-facing advice under an explicit ``error`` filter for it.
DECISIONS = (RunPruned, EscalationError, GrademaWarning)


class InternalErrors:
    """Runs the monitor's internals: an error is counted, shown once as a warning (with its
    traceback) and swallowed, so a bug in monitoring never costs a training run. Later errors
    are only counted (``gradema/internal_errors`` in the run summary)."""

    def __init__(self) -> None:
        self.count = 0
        self.written = 0  # the count as last written into the summary (``unwritten``)
        self._warned_filters = False

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or None when it failed. Decisions (``RunPruned``, ``EscalationError``)
        pass through."""
        try:
            return fn(*args)
        except DECISIONS:
            raise
        except Warning as exc:  # another library's warning, turned into an error by the filters
            self._skipped_warning(exc)
            return None
        except Exception as exc:  # noqa: BLE001
            self.count += 1
            if self.count == 1:
                warn(
                    "wandb_gradema: internal error, drift monitoring may be incomplete (shown once; "
                    f"later ones are counted in gradema/internal_errors): {type(exc).__name__}: {exc}\n"
                    f"{traceback.format_exc()}"
                )
            return None

    def _skipped_warning(self, exc: Warning) -> None:
        """A warning raised as an error inside the monitor (``-W error``): that part of the step
        is skipped, training goes on; said once, and not as an internal error."""
        if not self._warned_filters:
            self._warned_filters = True
            warn(
                "wandb_gradema: a warning inside drift monitoring was raised as an error by the warning "
                f"filters ({type(exc).__name__}: {exc}); that part of the monitoring was skipped (shown once)."
            )

    def unwritten(self) -> int | None:
        """The count, when it changed since the last call (to write into the summary), else None."""
        if self.count == self.written:
            return None
        self.written = self.count
        return self.count

    def restore(self, count: int) -> None:
        """Continue from a checkpoint's count (already written to the run it came from)."""
        self.count = self.written = count
