"""The SDK's channel over several gateway replicas: gRPC's client-side round_robin
spreads calls over all of them, carries on through the others when one goes, and
still checks each replica's certificate against the gateway's name."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.api.server import ServerTLS
from gateway.core.caller import Role
from gateway.stack import Pki
from partners import PartnerCredentials, gateway_target, secure_channel
from tests.helpers import health_status
from tests.partners.proxy import TcpRelay

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]


class _Count(grpc.aio.ServerInterceptor):
    def __init__(self, name: str, seen: Counter[str]) -> None:
        self.name, self.seen = name, seen

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        self.seen[self.name] += 1
        return await continuation(handler_call_details)


@dataclass
class Replicas:
    addresses: dict[str, str]
    servers: dict[str, grpc.aio.Server]
    seen: Counter[str]


async def _serve(name: str, tls: ServerTLS, seen: Counter[str]) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=[_Count(name, seen)])
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", tls.credentials())
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def replicas(pki: Pki, tmp_path: Path) -> AsyncIterator[Replicas]:
    """Two replicas with the gateway's certificate, and an impostor whose certificate,
    from the same CA, names another host."""
    seen: Counter[str] = Counter()
    other = pki.ca.issue_server(tmp_path, ["elsewhere.example"])
    impostor = ServerTLS(cert=other.cert, key=other.key, client_ca=pki.ca.cert_path)
    started = {
        name: await _serve(name, tls, seen)
        for name, tls in (("one", pki.server), ("two", pki.server), ("impostor", impostor))
    }
    try:
        yield Replicas(
            addresses={name: address for name, (_, address) in started.items()},
            servers={name: server for name, (server, _) in started.items()},
            seen=seen,
        )
    finally:
        for server, _ in started.values():
            await server.stop(0)


async def _checks(channel: grpc.aio.Channel, n: int) -> None:
    for _ in range(n):
        assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING


def test_a_list_of_replicas_is_one_static_target() -> None:
    assert gateway_target("127.0.0.1:7443") == "127.0.0.1:7443"
    assert gateway_target(["10.0.0.5:7443", "10.0.0.6:7443"]) == "ipv4:10.0.0.5:7443,10.0.0.6:7443"
    assert gateway_target("10.0.0.5:1, 10.0.0.6:2") == "ipv4:10.0.0.5:1,10.0.0.6:2"
    assert gateway_target(["[::1]:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"
    assert gateway_target("dns:///gw.example:7443") == "dns:///gw.example:7443"
    with pytest.raises(ValueError, match="IP addresses"):
        gateway_target(["gw1.example:7443", "gw2.example:7443"])
    with pytest.raises(ValueError, match="must all be IPv4 or all IPv6"):
        gateway_target(["10.0.0.5:1", "[::1]:2"])


async def test_calls_are_spread_over_every_replica_and_go_on_when_one_stops(
    replicas: Replicas, credentials: Callable[[str, Role], PartnerCredentials]
) -> None:
    creds = credentials("bank-a", Role.PARTNER)
    channel = secure_channel([replicas.addresses["one"], replicas.addresses["two"]], creds)
    try:
        await _checks(channel, 4)  # both subchannels connect
        replicas.seen.clear()
        await _checks(channel, 40)
        assert replicas.seen["one"] + replicas.seen["two"] == 40
        assert min(replicas.seen["one"], replicas.seen["two"]) >= 15, replicas.seen

        await replicas.servers["one"].stop(0)
        replicas.seen.clear()
        await _checks(channel, 20)
        assert replicas.seen == Counter({"two": 20})
    finally:
        await channel.close()


async def test_a_replica_whose_certificate_names_another_host_gets_no_call(
    replicas: Replicas, credentials: Callable[[str, Role], PartnerCredentials]
) -> None:
    creds = credentials("bank-a", Role.PARTNER)
    channel = secure_channel([replicas.addresses["impostor"], replicas.addresses["two"]], creds)
    try:
        await _checks(channel, 30)
        assert replicas.seen == Counter({"two": 30})
    finally:
        await channel.close()
    alone = secure_channel(replicas.addresses["impostor"], creds)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_status(alone, timeout=2)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await alone.close()
    assert replicas.seen["impostor"] == 0


async def test_a_slow_handshake_is_waited_for_not_failed(
    replicas: Replicas, credentials: Callable[[str, Role], PartnerCredentials]
) -> None:
    """The SDK's fast reconnects must not shorten the time a connection attempt may take:
    with ``grpc.min_reconnect_backoff_ms`` at 200 (gRPC's minimum connect timeout), a
    handshake slower than that failed every call waiting for it with UNAVAILABLE (how
    300 of 1,000 watches opened at once on a busy machine ended)."""
    async with TcpRelay(replicas.addresses["one"], delay=1.0) as relay:
        channel = secure_channel(relay.target, credentials("bank-a", Role.PARTNER))
        try:
            checks = [health_status(channel, timeout=10) for _ in range(20)]
            statuses = await asyncio.gather(*checks)
        finally:
            await channel.close()
    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 20
    assert relay.connections == 1
