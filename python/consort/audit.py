"""``consort.audit``: offline verification of jobs' evidence bundles (``consort audit export``),
with the engine's verifier — the checks ``consort audit verify`` runs."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, Union

from . import _native

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Check:
    """One check of the verifier: what was checked, whether it passed, and how or why not."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Report:
    """Every check run over the bundles; ``ok`` only if there were checks and all passed."""

    ok: bool
    checks: List[Check] = field(default_factory=list)
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return self.ok

    def failures(self) -> Iterator[Check]:
        """The checks that failed."""
        return (c for c in self.checks if not c.ok)

    def __str__(self) -> str:
        lines = [f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]
        lines.append("evidence verifies" if self.ok else "evidence does NOT verify")
        return "\n".join(lines)


def verify(
    bundles: Union[PathLike, Iterable[PathLike]],
    keys: Union[str, Iterable[str]] = (),
    *,
    full: bool = False,
) -> Report:
    """Verifies evidence bundles — one node's, or both nodes' bundles of a job, which are also
    checked against each other — against the nodes' audit public keys (hex, from
    ``consort audit key``). Without keys each bundle is checked against the key it carries, which
    proves integrity, not origin (the report says so). ``full`` checks the DLEQ proofs over every
    proved point instead of the sample.

    Returns the :class:`Report`; a bundle that does not verify is a failed check, not an
    exception. Unreadable files and malformed keys raise :class:`consort.InvalidArgument`.
    """
    paths = [os.fspath(bundles)] if isinstance(bundles, (str, os.PathLike)) else [os.fspath(b) for b in bundles]
    key_list = [keys] if isinstance(keys, str) else list(keys)
    raw = json.loads(_native.verify_bundles(paths, key_list, full))
    return Report(ok=raw["ok"], checks=[Check(**c) for c in raw["checks"]], seconds=raw["seconds"])
