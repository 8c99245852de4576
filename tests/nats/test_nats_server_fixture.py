"""The fixture itself: a real server that restarts on the same port with its streams."""

from __future__ import annotations

import nats as nats_client
from natsserver import NatsServer


async def test_restart_keeps_port_and_streams(nats: NatsServer) -> None:
    nc = await nats_client.connect(nats.url)
    js = nc.jetstream()
    await js.add_stream(name="FIXTURE", subjects=["fixture.>"])
    await js.publish("fixture.a", b"1")
    await nc.close()
    port = nats.port
    nats.restart()
    assert nats.port == port and nats.starts == 2
    nc = await nats_client.connect(nats.url)
    info = await nc.jetstream().stream_info("FIXTURE")
    assert info.state.messages == 1
    await nc.close()
