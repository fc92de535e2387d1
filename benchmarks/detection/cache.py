"""Trace cache: ``out/traces/HASH.npz`` arrays plus ``out/index.json`` metadata, keyed by spec hash.

Reruns load traces instead of retraining; a spec change (or ``GENERATOR_VERSION`` bump) changes
the hash, so a stale trace is never reused. ``out/`` is git-ignored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .spec import Spec, spec_hash
from .trace import ARRAYS, Trace, load_arrays

OUT = Path(__file__).parent / "out"


def cache_key(spec: Spec) -> str:
    """The spec's hash combined with the recorded ``Observation`` fields."""
    return hashlib.sha256(f"{spec_hash(spec)}:{','.join(ARRAYS)}".encode()).hexdigest()[:16]


class TraceCache:
    """Read and write cached traces under ``root``; only one process should write at a time."""

    def __init__(self, root: Path = OUT) -> None:
        self.root = root
        self.index_path = root / "index.json"
        self.index: dict[str, dict[str, Any]] = (
            json.loads(self.index_path.read_text()) if self.index_path.exists() else {}
        )

    def _npz(self, key: str) -> Path:
        return self.root / "traces" / f"{key}.npz"

    def get(self, spec: Spec, name: str, split: str) -> Trace | None:
        """The cached trace of ``spec`` (renamed to ``name``/``split``), or None."""
        key = cache_key(spec)
        meta = self.index.get(key)
        if meta is None or not self._npz(key).exists():
            return None
        fields = {k: v for k, v in meta.items() if k != "name"}
        return Trace(name=name, split=split, arrays=load_arrays(self._npz(key)), **fields)

    def put(self, trace: Trace) -> None:
        """Store ``trace`` and rewrite the index."""
        key = cache_key(trace.spec)
        self._npz(key).parent.mkdir(parents=True, exist_ok=True)
        trace.save_arrays(self._npz(key))
        self.index[key] = {"name": trace.name, **trace.meta()}
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.index, indent=1, sort_keys=True))
        tmp.replace(self.index_path)
