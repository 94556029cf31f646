"""Your first stream: a local OHIP gateway (the emulator) and five events printed."""

import asyncio
import os

from ohip_stream import EventStream
from ohip_stream.testing import Emulator


async def main() -> None:
    async with Emulator() as emulator:  # a local OHIP gateway on a free port
        await emulator.publish(5)  # five realistic events in its log
        os.environ.update(emulator.env())  # OHIP_GATEWAY_URL, OHIP_APP_KEY, ... of the emulator
        async with EventStream.from_env() as stream:
            async for event in stream:
                print(event.offset, event.module_name, event.event_name, event.hotel_id)
                if event.offset == "5":
                    break


asyncio.run(main())
