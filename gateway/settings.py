"""Configuration: embedded defaults for one machine, every knob overridable.

Read from the environment (``COOPGATE_*``) or a ``.env`` file. The defaults
give the embedded stack: SQLite and a Temporal dev server in ``data_dir``, a
dev certificate authority in ``data_dir/pki``. Scale-out is configuration
only: a PostgreSQL ``database_url`` and a ``temporal_address``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COOPGATE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path("var"),
        description="State of the embedded stack; a scale-out replica given its store, "
        "Temporal, keys and certificates by the settings below writes nothing there.",
    )
    # Replicas on different hosts share no file system: each secret and certificate
    # comes from a setting (a mounted file or an environment variable), else from the
    # data dir as the embedded stack keeps them. See docs/DEPLOYMENT.md.
    secrets_directory: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("secrets_directory", "COOPGATE_SECRETS_DIR"),
        description="Directory of the gateway's key files (default: data_dir/secrets).",
    )
    pki_directory: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("pki_directory", "COOPGATE_PKI_DIR"),
        description="Directory of the CA and the server's certificate (default: data_dir/pki).",
    )
    master_key: SecretStr | None = Field(
        default=None, description="Base64 of the 32-byte key wrapping every case's key."
    )
    pseudonym_key: SecretStr | None = Field(
        default=None, description="Base64 of the 64-byte key of subject pseudonyms."
    )
    identifier_key: SecretStr | None = Field(
        default=None, description="Base64 of the 32-byte HMAC key of local ids and identifiers."
    )
    checkpoint_key: SecretStr | None = Field(
        default=None, description="Base64 of the 32-byte Ed25519 seed signing audit checkpoints."
    )
    receipt_key: SecretStr | None = Field(
        default=None, description="Base64 of the 32-byte Ed25519 seed signing consent receipts."
    )
    tls_cert: Path | None = Field(
        default=None, description="The gateway's server certificate (default: pki/server.pem)."
    )
    tls_key: Path | None = Field(
        default=None, description="Its private key, mode 0600 (default: pki/server.key)."
    )
    tls_client_ca: Path | None = Field(
        default=None, description="The CA partners' certificates chain to (default: pki/ca.pem)."
    )
    tls_crl: Path | None = Field(
        default=None, description="The CA's revocation list (default: pki/crl.pem)."
    )
    listen: str = Field(default="127.0.0.1:7443", description="Gateway gRPC address (mTLS).")
    server_name: str = Field(
        default="localhost", description="DNS name in the gateway's server certificate."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL; default: SQLite file in data_dir.",
    )
    database_pool_size: int = Field(
        default=32,
        ge=1,
        description="Connections each gateway process keeps open to the store, and opens "
        "no more (on PostgreSQL, the case view's currency check and the audit log's "
        "batches share a pool of as many again).",
    )

    temporal_address: str | None = Field(
        default=None,
        description="host:port of an existing Temporal frontend; unset = embedded dev server.",
    )
    temporal_namespace: str = "default"
    temporal_tls_ca: Path | None = None
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_dev_port: int = Field(default=7233, description="Embedded dev server frontend port.")
    temporal_dev_ui_port: int = Field(default=8233, description="Embedded dev server UI port.")
    task_queue: str = "coopgate-incidents"

    reference_partners: bool = Field(
        default=True,
        description="`coopgate up` also runs the reference partner backends of the reference "
        "catalogue (and issues their certificates); false (or `up --no-partners`): the bare "
        "stack, for real deployments.",
    )

    console_listen: str = Field(
        default="127.0.0.1:8480",
        description="Where `coopgate up` serves the web console of one reference partner "
        "(bank-a), beside the reference backends.",
    )

    max_streams_per_partner: int = Field(
        default=2048,
        ge=1,
        description="Streams (watches, work subscriptions) one partner may hold open at once; "
        "one more is RESOURCE_EXHAUSTED with RetryInfo.",
    )
    max_inflight_per_partner: int = Field(
        default=512,
        ge=1,
        description="Unary calls of one partner being served at once; one more is "
        "RESOURCE_EXHAUSTED with RetryInfo.",
    )

    call_queue_seconds: int = Field(
        default=300,
        ge=1,
        description="How long a call or stream that reached the gateway may wait to be taken "
        "up before gRPC cancels it (CANCELLED). gRPC's own default, 30 s, cancelled 15-22% of "
        "1,000 watches opened at once on a loaded replica (new calls are taken up on the event "
        "loop that serves the others); a unary call's own deadline still ends its wait first.",
    )
    shutdown_grace_seconds: float = 5.0
    untraced_methods: frozenset[str] = Field(
        default=frozenset(
            {
                "/coopgate.v1.PartnerWorkService/Acknowledge",
                "/grpc.health.v1.Health/Check",
                "/grpc.health.v1.Health/Watch",
            }
        ),
        description="gRPC methods served without a span when tracing is on (still measured "
        "as rpc.server.call.duration): housekeeping that belongs to no incident, each call "
        "otherwise its own one-span trace (a partner's acknowledgements: about 11 spans an "
        "incident). A JSON list of /package.Service/Method names; [] traces every call.",
    )
    slow_watcher_seconds: float = Field(
        default=30.0, description="A watch whose client reads nothing for this long is dropped."
    )
    vocabulary: Path | None = Field(
        default=None, description="TOML of data categories and purposes (default: bundled)."
    )
    audit_origin: str | None = Field(
        default=None,
        description="Origin line of the audit log's checkpoints, also the name of their key; "
        "default coopgate.dev/audit/<server_name>. Never change it for a running log.",
    )
    verify_audit_at_start: bool = Field(
        default=True,
        description="At start, re-hash the audit log up to its last signed checkpoint and "
        "refuse a log that no longer matches (O(entries): about 25 us an entry measured on a "
        "loaded machine); false: skip it (verify offline with `coopgate audit verify-log`).",
    )
    checkpoint_interval_seconds: float = Field(
        default=10.0, description="How often a grown audit log gets a signed checkpoint; 0: never."
    )
    case_retention_days: float = Field(
        default=365.0,
        ge=0,
        description="How long a closed case's data is kept before it is crypto-shredded "
        "(storage limitation, GDPR art. 5(1)(e)); 0: kept for ever.",
    )
    retention_sweep_seconds: float = Field(
        default=3600.0, ge=0, description="How often cases past their retention are looked for."
    )
    workflow_start_sweep_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How often every gateway and worker starts the incident workflows of "
        "cases committed without them (the process stopped between the two); also once at "
        "start. 0: no sweep in this process (another one's still does).",
    )
    workflow_start_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How old a case's pending workflow start must be before a sweep makes it "
        "(younger ones are most likely being started by the OpenCase that wrote them).",
    )
    # What every consent receipt says about who issues it and answers for it (Kantara
    # Consent Receipt v1.1 / ISO/IEC TS 27560): set these for a real deployment.
    receipt_issuer: str | None = Field(
        default=None,
        description="`iss` of consent receipts; default coopgate.dev/consent/<server_name>.",
    )
    receipt_controller: str | None = Field(
        default=None,
        description="Data controller named on consent receipts; default "
        "'Coopgate gateway at <server_name>'.",
    )
    receipt_contact: str | None = Field(
        default=None,
        description="Where a customer reaches that controller about their consent (e-mail, "
        "URL or address); default privacy@<server_name>.",
    )
    receipt_jurisdiction: str = Field(
        default="EU",
        description="Jurisdiction the consents are given under, as receipts state it.",
    )
    receipt_policy_url: str | None = Field(
        default=None,
        description="Privacy notice / policy URL on consent receipts; default "
        "https://<server_name>/privacy.",
    )

    # Observability (docs/OPERATIONS.md). Exporters, sampler and service name come from
    # the standard OTEL_* variables; these are what the standard does not cover.
    telemetry_store: bool | None = Field(
        default=None,
        description="Keep traces and metrics in data_dir/telemetry.db for `coopgate trace` "
        "and `coopgate stats` (no collector needed); false: only what OTEL_* exports; "
        "unset: where the data dir exists when the process starts (`coopgate up` makes "
        "it; a replica configured by settings alone makes none).",
    )
    telemetry_retention_hours: float = Field(
        default=72.0, gt=0, description="How long data_dir/telemetry.db keeps spans and points."
    )
    prometheus_listen: str | None = Field(
        default=None,
        description="host:port where Prometheus scrapes the gateway's metrics "
        "(a port of its own); unset: no scrape endpoint.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: readable lines; json: one JSON object a line. Both carry the "
        "trace and span ids of the call or activity that logged.",
    )

    @property
    def telemetry_db(self) -> Path:
        return self.data_dir / "telemetry.db"

    @property
    def pki_dir(self) -> Path:
        return self.pki_directory or self.data_dir / "pki"

    @property
    def secrets_dir(self) -> Path:
        return self.secrets_directory or self.data_dir / "secrets"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'coopgate.db').resolve()}"

    @property
    def effective_audit_origin(self) -> str:
        return self.audit_origin or f"coopgate.dev/audit/{self.server_name}"

    @property
    def effective_receipt_issuer(self) -> str:
        return self.receipt_issuer or f"coopgate.dev/consent/{self.server_name}"

    @property
    def effective_receipt_controller(self) -> str:
        return self.receipt_controller or f"Coopgate gateway at {self.server_name}"

    @property
    def effective_receipt_contact(self) -> str:
        return self.receipt_contact or f"privacy@{self.server_name}"

    @property
    def effective_receipt_policy_url(self) -> str:
        return self.receipt_policy_url or f"https://{self.server_name}/privacy"

    @property
    def effective_temporal_address(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_dev_port}"
