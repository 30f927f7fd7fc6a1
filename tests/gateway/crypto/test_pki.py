"""The certificate authority and reading identities from certificates."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from gateway.core.caller import Role
from gateway.core.errors import InvalidArgument, Unauthenticated
from gateway.crypto.pki import CertificateAuthority, identity_from_pem


def test_issued_certificate_carries_partner_and_role(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    ca.init()
    files = ca.issue_client(tmp_path / "out", "bank-a", Role.ADVISOR)
    identity = identity_from_pem(files.cert.read_bytes())
    assert (identity.partner_id, identity.role) == ("bank-a", Role.ADVISOR)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert cert.issuer == x509.load_pem_x509_certificate(ca.cert_path.read_bytes()).subject
    assert oct(files.key.stat().st_mode & 0o777) == "0o600"
    assert oct(ca.key_path.stat().st_mode & 0o777) == "0o600"


def test_ca_init_refuses_to_overwrite(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    ca.init()
    before = ca.cert_path.read_bytes()
    with pytest.raises(FileExistsError):
        ca.init()
    assert ca.cert_path.read_bytes() == before


def test_bad_partner_id_is_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    ca.init()
    with pytest.raises(InvalidArgument):
        ca.issue_client(tmp_path, "Bank A!", Role.PARTNER)


def test_a_server_certificate_is_not_a_partner_identity(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    ca.init()
    files = ca.issue_server(tmp_path / "srv", ["localhost"])
    with pytest.raises(Unauthenticated):
        identity_from_pem(files.cert.read_bytes())
