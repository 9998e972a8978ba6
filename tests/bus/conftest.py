"""Fixtures of the bus tests: every test that takes ``bus`` or ``make_bus`` runs on the
in-memory bus and on NATS JetStream (the real server on :4222, a namespace per test)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from tests.bus.test_bus_contract import NATS_URL, ensure_nats

from tidecast.bus.memory import MemoryBus
from tidecast.bus.nats import NatsBus

MakeBus = Callable[..., Any]


@pytest.fixture(params=["memory", "nats"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[MakeBus]:
    """``await make_bus(**options)``: a started bus of this test's kind. On NATS every bus
    of one test shares one namespace (one stream), like processes of one deployment."""
    kind = request.param
    prefix = "t" + secrets.token_hex(4)
    made: list[Any] = []

    async def make(**kw: Any) -> Any:
        if kind == "memory":
            kw.pop("ack_wait", None)
            b: Any = MemoryBus(**kw)
        else:
            ensure_nats()
            b = NatsBus(NATS_URL, prefix=prefix, **{"ack_wait": 5.0, **kw})
            await b.start()
        made.append(b)
        return b

    make.kind = kind  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for b in reversed(made):
            if isinstance(b, NatsBus) and b is made[0]:
                await b.delete_stream()
            await b.aclose()


@pytest.fixture
async def bus(make_bus: MakeBus) -> Any:
    return await make_bus()
