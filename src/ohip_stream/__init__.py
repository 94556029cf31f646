"""ohip-stream: consume OPERA Cloud business events from the OHIP Streaming API.

.. code-block:: python

    from ohip_stream import EventStream, OAuthClientCredentials, SQLiteCheckpointStore

    async with EventStream(gateway_url=URL, app_key=KEY, chain_code="OHIPCN", auth=auth,
                           checkpoints=SQLiteCheckpointStore("offsets.db")) as stream:
        async for event in stream:
            handle(event)
"""

import logging

from ohip_stream._auth import (
    AccessToken,
    OAuthClientCredentials,
    OAuthPassword,
    StaticToken,
    TokenProvider,
)
from ohip_stream._checkpoints import (
    Checkpoint,
    CheckpointStore,
    MemoryCheckpointStore,
    SQLiteCheckpointStore,
)
from ohip_stream._checkpoints_pg import PostgresCheckpointStore
from ohip_stream._config import InvalidHandler
from ohip_stream._exceptions import (
    AuthenticationError,
    CheckpointError,
    CheckpointUnavailableError,
    ConfigurationError,
    ConnectionRejectedError,
    ConsumerAlreadyRunningError,
    ConsumerConflictError,
    EventValidationError,
    ForbiddenError,
    MessageTooLargeError,
    OhipError,
    ProtocolError,
    RateLimitedError,
    SubscriptionError,
    TransportError,
)
from ohip_stream._lifecycle import StreamState, Wait
from ohip_stream._models import Event, EventDetail, EventMetadata
from ohip_stream._snapshot import StreamSnapshot
from ohip_stream._stats import StreamStats
from ohip_stream._stream import EventStream
from ohip_stream._telemetry import Telemetry
from ohip_stream._telemetry_http import MetricsServer
from ohip_stream._timings import Timings
from ohip_stream._version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AccessToken",
    "AuthenticationError",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "CheckpointUnavailableError",
    "ConfigurationError",
    "ConnectionRejectedError",
    "ConsumerAlreadyRunningError",
    "ConsumerConflictError",
    "Event",
    "EventDetail",
    "EventMetadata",
    "EventStream",
    "EventValidationError",
    "ForbiddenError",
    "InvalidHandler",
    "MemoryCheckpointStore",
    "MessageTooLargeError",
    "MetricsServer",
    "OAuthClientCredentials",
    "OAuthPassword",
    "OhipError",
    "PostgresCheckpointStore",
    "ProtocolError",
    "RateLimitedError",
    "SQLiteCheckpointStore",
    "StaticToken",
    "StreamState",
    "StreamSnapshot",
    "StreamStats",
    "SubscriptionError",
    "Telemetry",
    "Timings",
    "TokenProvider",
    "TransportError",
    "Wait",
    "__version__",
]
