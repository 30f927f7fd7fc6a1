"""Revoked client certificates: the CA's certificate revocation list (RFC 5280 CRL,
``DATA_DIR/pki/crl.pem``), signed by the CA, written by ``coopgate ca revoke`` and read
again by every gateway replica when the file changes, without a restart."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger(__name__)

#: How long a CRL says it holds; `coopgate ca revoke` writes a new one at each revocation.
CRL_VALIDITY = dt.timedelta(days=30)


def crl_path(pki_dir: Path) -> Path:
    return pki_dir / "crl.pem"


def write_crl(
    path: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    serials: dict[int, dt.datetime],
) -> None:
    """Sign and write the CRL listing ``serials`` (serial -> when revoked), atomically."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + CRL_VALIDITY)
    )
    for serial, revoked_at in sorted(serials.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(revoked_at)
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    partial = path.with_suffix(".pem.partial")
    partial.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    os.replace(partial, path)


def read_crl(path: Path, ca_cert: x509.Certificate) -> dict[int, dt.datetime]:
    """The serials a CRL at ``path`` revokes; ValueError if the CA did not sign it."""
    if not path.exists():
        return {}
    crl = x509.load_pem_x509_crl(path.read_bytes())
    public_key = ca_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(
        public_key
    ):
        raise ValueError(f"{path} is not signed by the gateway's CA")
    return {entry.serial_number: entry.revocation_date_utc for entry in crl}


class RevocationList:
    """The revoked serials as the gateway checks them on every call. The file is looked
    at again at most every ``recheck_seconds`` and read when it changed; a CRL that does
    not verify is refused (logged) and the last good list stays in force."""

    def __init__(self, path: Path, ca_cert_path: Path, recheck_seconds: float = 1.0) -> None:
        self.path = path
        self._ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        self._recheck = recheck_seconds
        self._next_check = 0.0
        self._seen: tuple[int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._refresh(time.monotonic())

    def is_revoked(self, serial: int) -> bool:
        now = time.monotonic()
        if now >= self._next_check:
            self._refresh(now)
        return serial in self._serials

    def _refresh(self, now: float) -> None:
        self._next_check = now + self._recheck
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen, self._serials = None, frozenset()
            return
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen == self._seen:
            return
        try:
            self._serials = frozenset(read_crl(self.path, self._ca_cert))
        except ValueError as exc:
            log.error("revocation list not loaded, the previous one stays in force: %s", exc)
        self._seen = seen
