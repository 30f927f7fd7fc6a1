"""Benchmark: one consent decision with 1,000,000 consent records and 10,000
sharing agreements in the store, on SQLite and PostgreSQL.

Measures ``ConsentRules.evaluate`` (agreement + consent lookups and the rule)
on an open connection, as the case view and watch paths call it, and, as the
bare-engine baseline in the same run, a primary-key lookup of one consent row.

    python -m tests.benchmarks.consent_decision [--consents N] [--agreements N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import tempfile

from coopgate.v1 import admin_pb2, consents_pb2
from sqlalchemy import func, insert, select, text

from gateway.audit.log import AuditLog
from gateway.consent.rules import ConsentRules, Flow
from gateway.store import create_store, migrate
from gateway.store.schema import (
    consents,
    partners,
    services,
    sharing_agreements,
    subjects,
)
from tests.benchmarks.common import database, now_ns, run_and_exit, summarize

PARTNERS = 400
SERVICES = 50
CATEGORIES = ["device.sim", "payment.card", "diagnostic.findings", "interaction.history"]
PURPOSES = ["incident-diagnosis", "incident-resolution", "customer-care"]
CHUNK = 20_000


async def populate(url: str, n_consents: int, n_agreements: int, rng: random.Random) -> None:
    store = create_store(url)
    await migrate(store)
    now = dt.datetime.now(dt.UTC)
    partner_ids = [f"p{i:04d}" for i in range(PARTNERS)]
    service_ids = [f"svc-{i:03d}" for i in range(SERVICES)]
    async with store.write() as conn:
        await conn.execute(
            insert(partners),
            [
                {"partner_id": p, "display_name": p, "kind": 1, "created_at": now}
                for p in partner_ids
            ],
        )
        await conn.execute(
            insert(services),
            [
                {
                    "service_id": s,
                    "version": 1,
                    "definition": admin_pb2.Service(service_id=s).SerializeToString(),
                    "updated_at": now,
                }
                for s in service_ids
            ],
        )
        pairs: set[tuple[str, str, str]] = set()
        while len(pairs) < n_agreements:
            source, recipient = rng.sample(partner_ids, 2)
            pairs.add((source, recipient, rng.choice(service_ids)))
        rows = []
        for i, (source, recipient, service) in enumerate(sorted(pairs)):
            agreement = admin_pb2.SharingAgreement(
                agreement_id=f"agr-{i}",
                source_partner_id=source,
                recipient_partner_id=recipient,
                service_id=service,
                categories=rng.sample(CATEGORIES, 2),
                purposes=rng.sample(PURPOSES, 2),
            )
            rows.append(
                {
                    "agreement_id": agreement.agreement_id,
                    "source_partner_id": source,
                    "recipient_partner_id": recipient,
                    "service_id": service,
                    "definition": agreement.SerializeToString(),
                    "valid_from": now - dt.timedelta(days=1),
                    "valid_until": None,
                }
            )
        await conn.execute(insert(sharing_agreements), rows)
    agreed = sorted(pairs)
    n_subjects = max(1, n_consents // 4)
    for start in range(0, n_subjects, CHUNK):
        async with store.write() as conn:
            await conn.execute(
                insert(subjects),
                [
                    {"subject_id": f"{i:032x}", "created_at": now}
                    for i in range(start, min(n_subjects, start + CHUNK))
                ],
            )
    for start in range(0, n_consents, CHUNK):
        batch = []
        for i in range(start, min(n_consents, start + CHUNK)):
            if i % 2:
                source, recipient = rng.sample(partner_ids, 2)
            else:  # half the consents sit on an agreed flow, so decisions can allow
                source, recipient, _ = rng.choice(agreed)
            consent = consents_pb2.Consent(
                consent_id=f"cns-{i:012d}",
                source_partner_id=source,
                recipient_partner_ids=[recipient],
                categories=rng.sample(CATEGORIES, 2),
                purposes=rng.sample(PURPOSES, 2),
                collected_by_partner_id=recipient,
                state=consents_pb2.CONSENT_STATE_GIVEN,
            )
            batch.append(
                {
                    "consent_id": consent.consent_id,
                    "subject_id": f"{rng.randrange(n_subjects):032x}",
                    "source_partner_id": source,
                    "collected_by_partner_id": recipient,
                    "state": consents_pb2.CONSENT_STATE_GIVEN,
                    "valid_from": now - dt.timedelta(days=1),
                    "valid_until": None,
                    "definition": consent.SerializeToString(),
                    "created_at": now,
                    "updated_at": now,
                }
            )
        async with store.write() as conn:
            await conn.execute(insert(consents), batch)
    if store.is_sqlite:
        async with store.engine.connect() as conn:
            await conn.execute(text("ANALYZE"))
    else:
        async with store.engine.connect() as conn:
            await conn.execute(text("ANALYZE"))
    await store.close()


async def measure(url: str, samples: int, rng: random.Random) -> None:
    store = create_store(url)
    rules = ConsentRules(AuditLog(store))
    async with store.read() as conn:
        agreed = {
            (r.source_partner_id, r.recipient_partner_id): r.service_id
            for r in await conn.execute(
                select(
                    sharing_agreements.c.source_partner_id,
                    sharing_agreements.c.recipient_partner_id,
                    sharing_agreements.c.service_id,
                )
            )
        }
        n_consents = (await conn.execute(select(func.count()).select_from(consents))).scalar_one()
        n_agreements = (
            await conn.execute(select(func.count()).select_from(sharing_agreements))
        ).scalar_one()
        rows = (
            await conn.execute(
                select(consents.c.consent_id, consents.c.subject_id, consents.c.definition)
                .order_by(func.random())
                .limit(samples)
            )
        ).all()
    print(f"  store: {n_consents:,} consent records, {n_agreements:,} sharing agreements")
    probes = []
    for row in rows:
        consent = consents_pb2.Consent.FromString(row.definition)
        reader = consent.recipient_partner_ids[0]
        service = agreed.get(
            (consent.source_partner_id, reader), f"svc-{rng.randrange(SERVICES):03d}"
        )
        probes.append(
            (
                row.consent_id,
                row.subject_id,
                reader,
                service,
                Flow(consent.source_partner_id, rng.choice(CATEGORIES)),
                rng.choice(PURPOSES),
            )
        )
    decision_ns: list[int] = []
    bare_ns: list[int] = []
    allowed = 0
    async with store.engine.connect() as conn:
        for _ in range(2):  # warm-up pass, then the measured pass
            decision_ns.clear()
            bare_ns.clear()
            allowed = 0
            for consent_id, subject, reader, service, flow, purpose in probes:
                t0 = now_ns()
                await conn.execute(
                    select(consents.c.definition).where(consents.c.consent_id == consent_id)
                )
                t1 = now_ns()
                decisions = await rules.evaluate(
                    conn,
                    reader_partner_id=reader,
                    subject_id=subject,
                    service_id=service,
                    purpose=purpose,
                    flows=[flow],
                )
                t2 = now_ns()
                bare_ns.append(t1 - t0)
                decision_ns.append(t2 - t1)
                allowed += decisions[flow].allowed
    decision, bare = summarize(decision_ns), summarize(bare_ns)
    print(f"  consent decision : {decision}")
    print(f"  bare PK lookup   : {bare}")
    print(
        f"  ratio decision/bare: p50 {decision.p50_us / bare.p50_us:.2f}x,"
        f" p99 {decision.p99_us / bare.p99_us:.2f}x; allowed {allowed}/{len(probes)}"
    )
    await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--consents", type=int, default=1_000_000)
    parser.add_argument("--agreements", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=5_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    with tempfile.TemporaryDirectory() as workdir:
        for backend in backends:
            rng = random.Random(20261123)
            async with database(backend, workdir) as url:
                print(f"[{backend}] populating …", flush=True)
                t0 = now_ns()
                await populate(url, args.consents, args.agreements, rng)
                print(f"  populated in {(now_ns() - t0) / 1e9:.1f} s")
                await measure(url, args.samples, rng)


if __name__ == "__main__":
    run_and_exit(main())
