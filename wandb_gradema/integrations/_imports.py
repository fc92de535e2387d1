"""Deferred imports of optional frameworks: a missing one fails when used, naming the extra."""

from __future__ import annotations

from types import TracebackType


class OptionalImport:
    """Context manager that records an ``ImportError`` instead of raising it at import time.

    Why: an integration module must import cleanly without its framework (docs, ``help()``,
    IDEs), and fail only when the integration is used, with the install command in the message.

    Example:
        >>> with OptionalImport("lightning", extra="lightning") as _imports:
        ...     import lightning.pytorch as pl
        >>> _imports.check("GradientDriftCallback")  # raises ImportError if lightning is missing
    """

    def __init__(self, package: str, *, extra: str) -> None:
        self.package = package
        self.extra = extra
        self.error: ImportError | None = None

    def __enter__(self) -> OptionalImport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if isinstance(exc, ImportError):
            self.error = exc
            return True
        return False

    @property
    def available(self) -> bool:
        """True when every import in the block succeeded."""
        return self.error is None

    def check(self, what: str) -> None:
        """Raise ``ImportError`` naming the extra to install if the block's imports failed."""
        if self.error is not None:
            raise ImportError(
                f"{what} needs the `{self.package}` package, which could not be imported "
                f'({self.error}). Install it with: pip install "wandb_gradema[{self.extra}]"'
            ) from self.error
