"""The fleet's errors, under the package's tree (``ohip_stream.OhipError``)::

OhipError
├── CheckpointError
│   └── StaleEpochError          a checkpoint write from an epoch that is no longer the
│                                lease's (permanent: the stream stops in that worker)
└── LeaseStoreError              the fleet database refused an operation (permanent)
    └── LeaseStoreUnavailableError   the database cannot be reached now (retriable)
"""

from __future__ import annotations

from ohip_stream._exceptions import CheckpointError, OhipError

__all__ = ["LeaseStoreError", "LeaseStoreUnavailableError", "StaleEpochError"]


class StaleEpochError(CheckpointError):
    """A checkpoint write carried an epoch (fencing token) that the stream's lease no longer
    has: another worker owns the stream now. Not retriable: the writer must stop the stream."""

    def __init__(self, stream: str, epoch: int, current: int | None) -> None:
        now = "no lease" if current is None else f"epoch {current}"
        super().__init__(
            f"stream {stream}: checkpoint write from epoch {epoch} rejected, the lease has {now} "
            "(another worker owns the stream now; this worker stops it)"
        )
        self.stream = stream
        self.epoch = epoch
        self.current = current


class LeaseStoreError(OhipError):
    """The fleet database refused an operation (permissions, a schema from a newer release)."""


class LeaseStoreUnavailableError(LeaseStoreError):
    """The fleet database cannot be reached now (connection lost, server down, timeout)."""

    retriable = True
