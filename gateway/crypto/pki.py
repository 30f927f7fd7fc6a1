"""The gateway's certificate authority and the identities it vouches for.

A partner is who its client certificate says it is: the organisation (O) is
the partner id and the organisational unit (OU) its role. Certificates are
issued by the gateway's own CA (``coopgate ca init`` / ``ca issue``); the
server trusts no other issuer, so a certificate from anywhere else is refused
during the TLS handshake.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.core.caller import Role
from gateway.core.errors import InvalidArgument, Unauthenticated
from gateway.crypto.keyfiles import KeyFileError, check_key_file
from gateway.crypto.revocation import crl_path, read_crl, write_crl

PARTNER_ID_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
_CA_VALIDITY = dt.timedelta(days=3650)
_LEAF_VALIDITY = dt.timedelta(days=397)


@dataclass(slots=True, frozen=True)
class CertIdentity:
    """What a verified client certificate says about its holder."""

    partner_id: str
    role: Role
    serial: int = 0


@dataclass(slots=True, frozen=True)
class IssuedFiles:
    cert: Path
    key: Path
    ca: Path


def validate_partner_id(partner_id: str, field: str = "partner_id") -> str:
    if not PARTNER_ID_PATTERN.fullmatch(partner_id):
        raise InvalidArgument.field(
            field, "must be 2-63 chars of lowercase letters, digits and '-', starting with a letter"
        )
    return partner_id


class CertificateAuthority:
    """A file-backed CA in one directory: ``ca.pem`` and ``ca.key`` (mode 0600)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def key_path(self) -> Path:
        return self.directory / "ca.key"

    def exists(self) -> bool:
        return self.cert_path.exists() and self.key_path.exists()

    def init(self, name: str = "Coopgate dev CA") -> None:
        """Create the CA; refuses to overwrite an existing one."""
        if self.exists():
            raise FileExistsError(f"a CA already exists in {self.directory}")
        self.directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Coopgate"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_key(self.key_path, key)
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if not self.cert_path.exists():
            raise FileNotFoundError(f"no CA in {self.directory}: run `coopgate ca init` first")
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        return cert, load_key_for(self.key_path, cert)

    def check(self) -> None:
        """The CA's key is there, 0600, and the key of its certificate."""
        self._load()

    def revoke(self, cert_pem: bytes) -> int:
        """Add a certificate this CA issued to its revocation list; returns its serial.
        Gateways refuse it from their next call on (they re-read the list when it changes)."""
        ca_cert, ca_key = self._load()
        cert = x509.load_pem_x509_certificate(cert_pem)
        if cert.issuer != ca_cert.subject:
            raise ValueError("this certificate was not issued by this CA")
        path = crl_path(self.directory)
        revoked = read_crl(path, ca_cert)
        revoked.setdefault(cert.serial_number, _now())
        write_crl(path, ca_cert, ca_key, revoked)
        return cert.serial_number

    def issue_server(self, out_dir: Path, hostnames: list[str]) -> IssuedFiles:
        """A server certificate for the gateway, valid for ``hostnames`` and loopback."""
        sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
        sans += [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Coopgate"),
                x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0]),
            ]
        )
        return self._issue(out_dir, "server", name, sans, ExtendedKeyUsageOID.SERVER_AUTH)

    def issue_client(self, out_dir: Path, partner_id: str, role: Role) -> IssuedFiles:
        """A client certificate naming the partner (O) and role (OU)."""
        validate_partner_id(partner_id, "partner")
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, partner_id),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{partner_id}/{role.value}"),
            ]
        )
        return self._issue(
            out_dir, f"{partner_id}-{role.value}", name, [], ExtendedKeyUsageOID.CLIENT_AUTH
        )

    def _issue(
        self,
        out_dir: Path,
        stem: str,
        subject: x509.Name,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
    ) -> IssuedFiles:
        ca_cert, ca_key = self._load()
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _LEAF_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        out_dir.mkdir(parents=True, exist_ok=True)
        files = IssuedFiles(
            cert=out_dir / f"{stem}.pem", key=out_dir / f"{stem}.key", ca=self.cert_path
        )
        _write_key(files.key, key)
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return files


@functools.lru_cache(maxsize=1024)
def identity_from_pem(pem: bytes) -> CertIdentity:
    """Read partner and role from a client certificate the TLS layer already verified
    (a pure function of the certificate: the most recent are kept, every call of a
    connection presents the same one)."""
    cert = x509.load_pem_x509_certificate(pem)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(orgs) != 1 or len(units) != 1:
        raise Unauthenticated("client certificate must name exactly one organisation and role")
    try:
        role = Role(str(units[0].value))
    except ValueError:
        raise Unauthenticated(
            f"client certificate role {units[0].value!r} is not a Coopgate role"
        ) from None
    return CertIdentity(partner_id=str(orgs[0].value), role=role, serial=cert.serial_number)


def load_key_for(key_path: Path, cert: x509.Certificate) -> ec.EllipticCurvePrivateKey:
    """The private key in ``key_path``, checked: mode 0600 and the key of ``cert``."""
    if not key_path.exists():
        raise KeyFileError(f"{key_path} is missing (its certificate is there)")
    check_key_file(key_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError:
        raise KeyFileError(f"{key_path} is not a readable PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise KeyFileError(f"{key_path} is not the key of its certificate")
    return key


def check_server_files(cert_path: Path, key_path: Path) -> None:
    """The server's certificate and key belong together (both present, matched, 0600)."""
    if not cert_path.exists():
        raise KeyFileError(f"{cert_path} is missing (its key is there)")
    load_key_for(key_path, x509.load_pem_x509_certificate(cert_path.read_bytes()))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
