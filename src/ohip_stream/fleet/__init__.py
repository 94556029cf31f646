"""Many streams on many processes and hosts, exactly one consumer each (``ohip_stream.fleet``).

.. code-block:: python

    from ohip_stream.fleet import Fleet

    async def handle(stream, event):
        ...

    async with Fleet("sqlite:///fleet.db", streams="streams.toml", handler=handle) as fleet:
        fleet.install_signal_handlers()
        await fleet.run()

SQLite serves one host with nothing else installed; PostgreSQL (``pip install
"ohip-stream[fleet]"``) serves many hosts. See the how-to "Run a fleet".
"""

from ohip_stream.fleet._assign import Plan, plan
from ohip_stream.fleet._errors import LeaseStoreError, LeaseStoreUnavailableError, StaleEpochError
from ohip_stream.fleet._fenced import FencedCheckpointStore
from ohip_stream.fleet._file import load_streams_file, parse_streams
from ohip_stream.fleet._fleet import Fleet
from ohip_stream.fleet._model import Lease, StreamSpec, SyncResult, Worker
from ohip_stream.fleet._postgres import PostgresLeaseStore
from ohip_stream.fleet._runner import Handler
from ohip_stream.fleet._sqlite import SQLiteLeaseStore
from ohip_stream.fleet._stats import FleetStats
from ohip_stream.fleet._status import StreamStatus, fleet_status
from ohip_stream.fleet._store import SCHEMA_VERSION, LeaseStore, open_lease_store

__all__ = [
    "SCHEMA_VERSION",
    "FencedCheckpointStore",
    "Fleet",
    "FleetStats",
    "Handler",
    "Lease",
    "LeaseStore",
    "LeaseStoreError",
    "LeaseStoreUnavailableError",
    "Plan",
    "PostgresLeaseStore",
    "SQLiteLeaseStore",
    "StaleEpochError",
    "StreamSpec",
    "StreamStatus",
    "SyncResult",
    "Worker",
    "fleet_status",
    "load_streams_file",
    "open_lease_store",
    "parse_streams",
    "plan",
]
