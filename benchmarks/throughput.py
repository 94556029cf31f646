"""Events per second from the socket to the caller, side by side with the alternatives.

The emulator runs in fast replay mode in a separate process and serves a backlog of N realistic
events (about 700 bytes each). Each contender connects over graphql-transport-ws (with
``connection_init`` and a token from the emulator's OAuth endpoint), subscribes to the library's
own ``newEvent`` document from the backlog's first offset, and is timed from its first event to
its last. The contenders alternate over the rounds; the table shows medians.

    python benchmarks/throughput.py [-n/--events N] [--rounds R] [--dedup-window W] [--json]

Defaults: 100,000 events, 9 rounds, the size the project's throughput goals are stated for.
``--dedup-window`` runs the stream with that ``dedup_window`` instead of its default (how much
the ``uniqueEventId`` window's size costs).

Contenders (the plain ``websockets`` clients use its public ``recv(decode=False)`` and read
frames undecoded, as the stream does; nothing reads a private attribute of any dependency):

0. ceiling: a plain ``websockets`` client that only receives;
1. floor: plain ``websockets`` + ``json.loads`` of each frame;
2. validate: plain ``websockets`` validating each frame into the same ``Event`` model in one
   pass: the hand-written loop any client that hands out validated models can be compared with
   (the goal ``sdk_vs_validate >= 1.0``);
3. gql: ``gql``'s ``WebsocketsTransport`` subscription (hands out unvalidated dicts);
4. sdk: ``EventStream`` as a user runs it: validated models, de-duplication, batched SQLite
   checkpoint commits.

Ratios: ``sdk_vs_X`` is a ratio of medians; ``sdk_vs_X_paired`` the median over rounds of the
ratio within each round (the contenders of one round run seconds apart, so the machine's drift
between rounds cancels out of it), and ``paired_range`` the lowest and highest of those ratios:
how noisy the machine was.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _harness
import websockets
from _harness import CLIENT_OPTIONS, EmulatorProcess

from ohip_stream import EventStream, SQLiteCheckpointStore, StaticToken
from ohip_stream._models import parse_next_frame

Result = tuple[int, float, str]  # events received, seconds first->last, last offset


async def _plain(
    emu: EmulatorProcess,
    token: str,
    n: int,
    handle: Callable[[str | bytes], str | None],
) -> Result:
    """A plain websockets client: init, subscribe, then ``handle`` each of n frames."""
    async with websockets.connect(
        emu.ws_url,
        additional_headers={"Authorization": f"Bearer {token}"},
        **CLIENT_OPTIONS,
    ) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": _init(emu, token)}))
        ack = json.loads(await ws.recv())
        assert ack["type"] == "connection_ack", ack
        await ws.send(
            json.dumps(
                {"id": "1", "type": "subscribe", "payload": _harness.subscribe_payload(emu, 1)}
            )
        )
        recv = ws.recv
        # Undecoded, as the stream reads them: json.loads and pydantic take UTF-8 bytes.
        frame: bytes | None = await recv(False)
        handle(frame)
        started = time.perf_counter()
        for _ in range(n - 1):
            frame = await recv(False)
            handle(frame)
        elapsed = time.perf_counter() - started
    # checked once, after the clock stopped: the last frame is the backlog's last event
    return n, elapsed, _json_loads(frame) or ""


def _init(emu: EmulatorProcess, token: str) -> dict[str, Any]:
    return _harness.init_payload(emu, token)


def _receive_only(frame: str | bytes) -> str | None:
    return None


def _json_loads(frame: str | bytes) -> str | None:
    message = json.loads(frame)
    offset: str = message["payload"]["data"]["newEvent"]["metadata"]["offset"]
    return offset


def _validate(frame: str | bytes) -> str | None:
    return parse_next_frame(frame)["payload"]["data"]["newEvent"].metadata.offset


async def ceiling(emu: EmulatorProcess, token: str, n: int) -> Result:
    return await _plain(emu, token, n, _receive_only)


async def floor(emu: EmulatorProcess, token: str, n: int) -> Result:
    return await _plain(emu, token, n, _json_loads)


async def validate(emu: EmulatorProcess, token: str, n: int) -> Result:
    return await _plain(emu, token, n, _validate)


async def gql_client(emu: EmulatorProcess, token: str, n: int) -> Result:
    """gql's own subscription API over its WebsocketsTransport, with the same document."""
    from gql import Client, gql
    from gql.transport.websockets import WebsocketsTransport

    options = {k: v for k, v in CLIENT_OPTIONS.items() if k not in ("subprotocols",)}
    transport = WebsocketsTransport(
        url=emu.ws_url,
        headers={"Authorization": f"Bearer {token}"},
        init_payload=_init(emu, token),
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
        connect_args=options,
    )
    document = gql(_harness.subscribe_payload(emu, 1)["query"])
    count = 0
    last = ""
    started = 0.0
    async with Client(transport=transport) as session:
        async for data in session.subscribe(document):
            if count == 0:
                started = time.perf_counter()
            count += 1
            last = data["newEvent"]["metadata"]["offset"]
            if count >= n:
                break
        elapsed = time.perf_counter() - started
    return count, elapsed, last


async def sdk(emu: EmulatorProcess, token: str, n: int, dedup_window: int | None = None) -> Result:
    """EventStream with a SQLite checkpoint store in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="ohip-bench-sdk-") as tmp:
        store = SQLiteCheckpointStore(Path(tmp) / "offsets.db")
        count = 0
        last = ""
        started = 0.0
        try:
            async with EventStream(
                gateway_url=emu.gateway_url,
                app_key=emu.app_key,
                chain_code=emu.chain_code,
                auth=StaticToken(token, enterprise_id=emu.env["OHIP_ENTERPRISE_ID"]),
                checkpoints=store,
                offset=str(emu.first_offset),
                lock_dir=tmp,
                dedup_window=dedup_window,
            ) as stream:
                async for event in stream:
                    if count == 0:
                        started = time.perf_counter()
                    count += 1
                    last = event.metadata.offset
                    if count >= n:
                        break
                elapsed = time.perf_counter() - started
            saved = await store.load(stream.stream_id)
        finally:
            store.close()
        # what the loop processed was committed (batched commits, the last one on leaving)
        if saved is None or saved.offset != last:
            raise RuntimeError(f"the checkpoint is {saved}, not offset {last}")
    return count, elapsed, last


CONTENDERS: dict[str, Callable[[EmulatorProcess, str, int], Awaitable[Result]]] = {
    "ceiling": ceiling,
    "floor": floor,
    "validate": validate,
    "sdk": sdk,
    "gql": gql_client,
}

LABELS = {
    "ceiling": "websockets, receive only",
    "floor": "websockets + json.loads",
    "validate": "websockets + Event (one pass)",
    "gql": "gql WebsocketsTransport",
    "sdk": "ohip_stream.EventStream",
}


async def run(
    n: int, rounds: int, verbose: bool, dedup_window: int | None = None
) -> dict[str, Any]:
    contenders = dict(CONTENDERS)
    if dedup_window is not None:
        contenders["sdk"] = functools.partial(sdk, dedup_window=dedup_window)
    samples: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    cpu_samples: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    with EmulatorProcess(n) as emu:
        token = await _harness.issue_token(emu)
        expected_last = str(emu.first_offset + n - 1)
        names = list(CONTENDERS)
        for round_index in range(rounds):
            # alternate, and rotate the order so that no contender always goes first; the sdk
            # runs between validate and gql (in the first three rounds), so that each paired
            # ratio of the goals compares runs seconds apart
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in order:
                gc.collect()
                cpu = time.process_time()
                count, elapsed, last = await contenders[name](emu, token, n)
                cpu = time.process_time() - cpu
                if count != n or last != expected_last:
                    raise RuntimeError(
                        f"{name} received {count} events ending at offset {last!r}; expected "
                        f"{n} ending at {expected_last}"
                    )
                eps = (n - 1) / elapsed if elapsed > 0 else float("inf")
                samples[name].append(eps)
                # the client process's CPU time per event, connect and close included: less
                # sensitive than the wall clock to other work on the machine
                cpu_samples[name].append(cpu / n * 1e6)
                if verbose:
                    print(
                        f"  round {round_index + 1} {name:<17} {eps:>12,.0f} events/s "
                        f"{cpu / n * 1e6:>8.2f} us CPU/event",
                        flush=True,
                    )
    medians = {name: statistics.median(values) for name, values in samples.items()}
    sdk_eps = medians["sdk"]

    def ratios(base: str) -> list[float]:
        """sdk/base within each round: the machine's drift between rounds (other load,
        frequency) cancels out of these, unlike a ratio of medians."""
        return [a / b for a, b in zip(samples["sdk"], samples[base], strict=True)]

    def paired(base: str) -> float:
        return round(statistics.median(ratios(base)), 3)

    def spread(base: str) -> list[float]:
        values = ratios(base)
        return [round(min(values), 3), round(max(values), 3)]

    return {
        "n": n,
        "rounds": rounds,
        "dedup_window": dedup_window,
        "ceiling_eps": round(medians["ceiling"]),
        "floor_eps": round(medians["floor"]),
        "validate_eps": round(medians["validate"]),
        "gql_eps": round(medians["gql"]),
        "sdk_eps": round(sdk_eps),
        "sdk_vs_gql": round(sdk_eps / medians["gql"], 3),
        "sdk_vs_validate": round(sdk_eps / medians["validate"], 3),
        "sdk_vs_floor": round(sdk_eps / medians["floor"], 3),
        "sdk_vs_gql_paired": paired("gql"),
        "sdk_vs_validate_paired": paired("validate"),
        "paired_range": {"sdk_vs_gql": spread("gql"), "sdk_vs_validate": spread("validate")},
        "samples": {name: [round(v) for v in values] for name, values in samples.items()},
        "cpu_us": {name: round(statistics.median(v), 2) for name, v in cpu_samples.items()},
    }


def print_table(result: dict[str, Any]) -> None:
    ceiling_eps = result["ceiling_eps"]
    print(
        f"\n{result['n']:,} events, {result['rounds']} round(s), median events/s "
        "(first event to last)"
    )
    print(
        f"{'contender':<32}{'events/s':>12}{'vs ceiling':>12}{'sdk vs it':>12}{'CPU us/event':>14}"
    )
    for name in CONTENDERS:
        eps = result[f"{name}_eps"]
        print(
            f"{LABELS[name]:<32}{eps:>12,}{eps / ceiling_eps:>12.2f}"
            f"{result['sdk_eps'] / eps:>12.2f}{result['cpu_us'][name]:>14.2f}"
        )
    print(
        f"\nsdk_vs_gql {result['sdk_vs_gql']:.3f}  sdk_vs_validate {result['sdk_vs_validate']:.3f}"
        f"  sdk_vs_floor {result['sdk_vs_floor']:.3f}"
    )
    print(
        f"paired within each round (median): sdk_vs_gql {result['sdk_vs_gql_paired']:.3f}"
        f"  sdk_vs_validate {result['sdk_vs_validate_paired']:.3f}"
    )
    low_high = result["paired_range"]
    print(
        "paired ratios, lowest to highest over the rounds: "
        f"sdk_vs_gql {low_high['sdk_vs_gql'][0]:.3f}-{low_high['sdk_vs_gql'][1]:.3f}"
        f"  sdk_vs_validate {low_high['sdk_vs_validate'][0]:.3f}"
        f"-{low_high['sdk_vs_validate'][1]:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--dedup-window",
        type=int,
        help="the stream's dedup_window (default: its own default); at least queue_size",
    )
    parser.add_argument("--json", action="store_true", help="a JSON object on the last line")
    args = parser.parse_args()
    if args.events < 2 or args.rounds < 1:
        parser.error("--events must be at least 2 and --rounds at least 1")
    queue_size = CLIENT_OPTIONS["max_queue"]
    if args.dedup_window is not None and args.dedup_window < queue_size:
        parser.error(f"--dedup-window must be at least the stream's queue_size ({queue_size})")
    info = _harness.machine()
    print(
        f"machine: {info['cpus']} CPU(s), {info['cpu']}, Python {info['python']}; "
        f"websockets {websockets.__version__}",
        flush=True,
    )
    result = asyncio.run(
        run(args.events, args.rounds, verbose=True, dedup_window=args.dedup_window)
    )
    print_table(result)
    if args.json:
        _harness.print_json({key: result[key] for key in JSON_KEYS})


JSON_KEYS = (
    "n",
    "rounds",
    "dedup_window",
    "ceiling_eps",
    "floor_eps",
    "validate_eps",
    "gql_eps",
    "sdk_eps",
    "sdk_vs_gql",
    "sdk_vs_validate",
    "sdk_vs_floor",
    "sdk_vs_gql_paired",
    "sdk_vs_validate_paired",
    "paired_range",
    "samples",
    "cpu_us",
)

if __name__ == "__main__":
    main()
