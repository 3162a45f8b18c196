"""The exceptions of the ``consort`` package.

Every exception carries the node's (or the engine's) message as its text. Messages about data name
the file, line and column and the kind of error, never a value from the data.
"""

from __future__ import annotations

from typing import Any, Dict, Optional


class Error(Exception):
    """Base class of every error the package raises."""


class NodeUnavailable(Error):
    """No node runs in the directory, or its control socket does not answer."""


class InvalidArgument(Error, ValueError):
    """A parameter the node or the engine rejected (unknown protocol, peer, dataset, ...)."""


class DatasetError(Error):
    """A dataset that does not load: a malformed row, an empty or duplicate key, a missing column.

    The message names the file (for a DataFrame: the CSV it was written to), the line and the
    column; line 1 is the header, so line ``L`` is row ``L - 2`` of a DataFrame (0-based).
    """


class JobError(Error):
    """A job that did not end ``done``. ``job_id`` and ``status`` (the node's record) say which."""

    def __init__(self, message: str, job_id: Optional[str] = None, status: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.job_id = job_id
        self.status = status


class JobRefused(JobError):
    """The job was refused before any protocol message: by the peer (no grant, policy) or by this
    node's own policy. The message is the refusal's reason as the node recorded it."""


class JobFailed(JobError):
    """The job started and failed (or was interrupted by a node stopping). The message is the
    node's reason, e.g. a bad row in a dataset (file, line, column) or a peer that went away."""
