"""consort from Python: private set intersection, joint models (logistic regression and
SecureBoost gradient-boosted trees) and audit evidence, driven from pandas.

- :class:`Node` — a client of a running node's control socket (``DIR/control.sock``): register
  datasets (files or DataFrames), run PSI, train and score jobs with a peer node, list jobs.
- :func:`intersect` — both parties of a private join in this process (notebooks, tests).
- :mod:`consort.audit` — offline verification of jobs' evidence bundles.
- :mod:`consort.local` — two nodes on loopback in temporary directories (tries, tests, examples).

Errors derive from :class:`Error`; a job that does not end ``done`` raises :class:`JobRefused` or
:class:`JobFailed` with the node's message.
"""

from . import audit
from ._native import __version__
from .errors import (
    DatasetError,
    Error,
    InvalidArgument,
    JobError,
    JobFailed,
    JobRefused,
    NodeUnavailable,
)
from .join import intersect
from .node import Node, TrainResult

__all__ = [
    "DatasetError",
    "Error",
    "InvalidArgument",
    "JobError",
    "JobFailed",
    "JobRefused",
    "Node",
    "NodeUnavailable",
    "TrainResult",
    "__version__",
    "audit",
    "intersect",
]
