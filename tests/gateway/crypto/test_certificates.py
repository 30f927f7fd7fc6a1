"""Certificates over the real API: a revoked certificate is refused from the next call
on, without a restart; an expired one never completes a handshake; the server's
certificate is replaced without dropping open streams; key files that are missing,
open to others or not the key of their certificate stop the start."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from coopgate.v1 import cases_pb2, cases_pb2_grpc, work_pb2, work_pb2_grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.core.caller import Role
from gateway.crypto.keyfiles import KeyFileError, read_secret
from gateway.crypto.pki import CertificateAuthority
from gateway.crypto.revocation import RevocationList, crl_path, write_crl
from gateway.settings import Settings
from gateway.stack import StackError, ensure_pki
from partners import PartnerCredentials, secure_channel
from tests.conftest import Stack
from tests.helpers import error_info, run_coopgate


async def _list_cases(target: str, creds: PartnerCredentials) -> None:
    async with secure_channel(target, creds) as channel:
        await cases_pb2_grpc.CaseServiceStub(channel).ListCases(
            cases_pb2.ListCasesRequest(purpose="customer-care"), timeout=5
        )


async def _first_refusal(target: str, creds: PartnerCredentials) -> grpc.aio.AioRpcError:
    """The first error a call gets; the revocation list is looked at again within a second."""
    async with asyncio.timeout(10):
        while True:
            try:
                await _list_cases(target, creds)
            except grpc.aio.AioRpcError as error:
                return error
            await asyncio.sleep(0.2)


async def test_a_revoked_certificate_is_refused_from_its_next_call_on(
    stack: Stack, pki_dir: Path, tmp_path: Path
) -> None:
    ca = CertificateAuthority(pki_dir / "pki")
    doomed = ca.issue_client(tmp_path / "doomed", "bank-a", Role.ADVISOR)
    kept = ca.issue_client(tmp_path / "kept", "bank-a", Role.ADVISOR)
    creds = PartnerCredentials(cert=doomed.cert, key=doomed.key, ca=doomed.ca)
    await _list_cases(stack.target, creds)

    ca.revoke(doomed.cert.read_bytes())

    error = await _first_refusal(stack.target, creds)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(error).reason == "CERTIFICATE_REVOKED"
    # Another certificate of the same partner and role still serves.
    await _list_cases(stack.target, PartnerCredentials(cert=kept.cert, key=kept.key, ca=kept.ca))


def test_a_revocation_list_the_ca_did_not_sign_is_refused_and_the_last_good_one_stays(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    ca.init()
    revoked = ca.issue_client(tmp_path / "c", "bank-a", Role.PARTNER)
    serial = ca.revoke(revoked.cert.read_bytes())
    revocations = RevocationList(crl_path(ca.directory), ca.cert_path, recheck_seconds=0)
    assert revocations.is_revoked(serial)

    rogue = CertificateAuthority(tmp_path / "rogue")
    rogue.init("Rogue CA")
    rogue_cert = x509.load_pem_x509_certificate(rogue.cert_path.read_bytes())
    rogue_key = serialization.load_pem_private_key(rogue.key_path.read_bytes(), password=None)
    assert isinstance(rogue_key, ec.EllipticCurvePrivateKey)
    write_crl(crl_path(ca.directory), rogue_cert, rogue_key, {})  # "nothing is revoked"
    assert revocations.is_revoked(serial)


def _expired_client(ca_dir: Path, out: Path) -> PartnerCredentials:
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bank-a"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "advisor"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True)
    (out / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "c.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return PartnerCredentials(cert=out / "c.pem", key=out / "c.key", ca=ca_dir / "ca.pem")


async def test_an_expired_certificate_is_refused_at_the_handshake(
    stack: Stack, pki_dir: Path, tmp_path: Path
) -> None:
    creds = _expired_client(pki_dir / "pki", tmp_path / "expired")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _list_cases(stack.target, creds)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def _served_certificate_serial(target: str, creds: PartnerCredentials) -> int:
    """The serial of the certificate the server presents to a new connection."""
    host, port = target.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(creds.ca))
    context.load_cert_chain(str(creds.cert), str(creds.key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_the_server_certificate_is_replaced_without_dropping_open_streams(
    stack: Stack, pki_dir: Path, credentials: Callable[[str, Role], PartnerCredentials]
) -> None:
    creds = credentials("operator-x", Role.PARTNER)
    before = await asyncio.to_thread(_served_certificate_serial, stack.target, creds)
    async with secure_channel(stack.target, creds) as channel:
        stream = work_pb2_grpc.PartnerWorkServiceStub(channel).Subscribe(
            work_pb2.SubscribeRequest(max_in_flight=1)
        )
        waiting = asyncio.ensure_future(stream.read())
        await asyncio.sleep(0.3)
        assert not waiting.done()

        CertificateAuthority(pki_dir / "pki").issue_server(pki_dir / "pki", ["localhost"])
        after = await asyncio.to_thread(_served_certificate_serial, stack.target, creds)
        assert after != before

        await asyncio.sleep(0.3)
        assert not waiting.done(), "the open stream was dropped"
        assert not stream.done(), "the open stream was ended"
        # The old connection still serves calls too.
        await cases_pb2_grpc.CaseServiceStub(channel).ListCases(
            cases_pb2.ListCasesRequest(purpose="customer-care"), timeout=5
        )
        waiting.cancel()
        stream.cancel()
    await _list_cases(stack.target, creds)  # and a new connection, on the new certificate


def _pki(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "var")
    ensure_pki(settings)
    return settings


def test_a_key_open_to_others_stops_the_start(tmp_path: Path) -> None:
    settings = _pki(tmp_path)
    (settings.pki_dir / "server.key").chmod(0o644)
    with pytest.raises(StackError, match=r"server.key is open to other users \(mode 0644\)"):
        ensure_pki(settings)


def test_a_missing_ca_key_stops_the_start(tmp_path: Path) -> None:
    settings = _pki(tmp_path)
    (settings.pki_dir / "ca.key").unlink()
    with pytest.raises(StackError, match=r"ca.key is missing"):
        ensure_pki(settings)


def test_a_server_key_that_is_not_its_certificates_stops_the_start(tmp_path: Path) -> None:
    settings = _pki(tmp_path)
    other = tmp_path / "other"
    CertificateAuthority(settings.pki_dir).issue_server(other, ["localhost"])
    os.replace(other / "server.key", settings.pki_dir / "server.key")
    with pytest.raises(StackError, match=r"server.key is not the key of its certificate"):
        ensure_pki(settings)


def test_a_missing_server_key_stops_the_start(tmp_path: Path) -> None:
    settings = _pki(tmp_path)
    (settings.pki_dir / "server.key").unlink()
    with pytest.raises(StackError, match=r"server.key is missing"):
        ensure_pki(settings)


def test_a_secret_open_to_others_or_cut_short_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    assert len(read_secret(path)) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="open to other users"):
        read_secret(path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(KeyFileError, match="holds 5 bytes where 32 are expected"):
        read_secret(path)


async def test_ca_revoke_from_the_command_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    ca = CertificateAuthority(data_dir / "pki")
    ca.init()
    files = ca.issue_client(tmp_path / "c", "bank-a", Role.PARTNER)
    code, _, said = await run_coopgate("ca", "revoke", str(files.cert), "--data-dir", str(data_dir))
    assert code == 0, said
    serial = x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number
    assert f"revoked serial {serial:x}" in said
    assert RevocationList(crl_path(ca.directory), ca.cert_path).is_revoked(serial)

    rogue = CertificateAuthority(tmp_path / "rogue")
    rogue.init("Rogue CA")
    foreign = rogue.issue_client(tmp_path / "f", "bank-a", Role.PARTNER)
    code, _, said = await run_coopgate(
        "ca", "revoke", str(foreign.cert), "--data-dir", str(data_dir)
    )
    assert code == 1
    assert "not issued by this CA" in said
