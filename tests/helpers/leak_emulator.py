"""An emulator in its own process for tests/test_leaks.py (so that only the client is measured).

Compressed gap and a large upgrade budget; prints one JSON line with the connection settings,
then serves until its stdin closes. Argument: the number of events to publish first.
"""

from __future__ import annotations

import json
import sys

from ohip_stream.testing import Emulator


def main() -> None:
    with Emulator(
        complete_gap=0.001,
        complete_inflight=1,
        upgrade_budget=(1_000_000, 1.0),
        server_ping_interval=5.0,
    ) as emu:
        emu.publish_sync(int(sys.argv[1]))
        sys.stdout.write(json.dumps(emu.env()) + "\n")
        sys.stdout.flush()
        sys.stdin.read()  # until the test closes our stdin


if __name__ == "__main__":
    main()
