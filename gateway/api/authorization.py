"""Who may call what: one declared rule for every RPC of the coopgate.v1 contract.

Each rule says which certificate roles the RPC admits, whether the caller must take
part in the case the request names (case-scoped), and whether it reads another
partner's data (and so goes through the consent decision point). The gateway's
interceptor (``gateway.api.interceptors``) enforces the roles, for every call, before
the handler runs; it resolves each method's rule once, when it first wraps the
method's handler, so a call costs one set membership. Deny by default: a method with
no rule answers PERMISSION_DENIED to everyone, and ``create_server`` refuses to build a
server that registers a contract method without one (``require_rules``).

What the interceptor cannot decide without reading the store is decided where the
store is read, from the same declaration:

- case-scoped: the case is loaded with the caller's participation in the same one
  statement (``gateway.cases.rows``), so "not a participant" and "no such case" are the
  same answer, NOT_FOUND ``CASE_NOT_FOUND``. Every case-scoped request names its case in
  ``case_id`` (checked by ``require_rules``).
- consent: another partner's items are shown only as far as the sharing agreement, the
  customer's consent and the declared purpose allow, decided at read time
  (``gateway.consent``) and audited.

Health and reflection are not part of the contract: any valid certificate may call them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType

from coopgate.v1 import (
    admin_pb2,
    audit_pb2,
    cases_pb2,
    consents_pb2,
    identity_pb2,
    work_pb2,
)
from google.protobuf.descriptor import MethodDescriptor

from gateway.core.caller import Caller, Role
from gateway.core.errors import PermissionDenied

#: The modules of the contract whose services the gateway serves.
CONTRACT_MODULES: tuple[ModuleType, ...] = (
    admin_pb2,
    audit_pb2,
    cases_pb2,
    consents_pb2,
    identity_pb2,
    work_pb2,
)


def method_path(method: MethodDescriptor) -> str:
    """The name gRPC routes a call by: ``/coopgate.v1.CaseService/OpenCase``."""
    return f"/{method.containing_service.full_name}/{method.name}"


#: Every RPC of the contract, by its full method name, from the service descriptors.
CONTRACT_METHODS: Mapping[str, MethodDescriptor] = MappingProxyType(
    {
        method_path(method): method
        for module in CONTRACT_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
)


@dataclass(slots=True, frozen=True)
class Rule:
    """Who may call one RPC."""

    #: The certificate roles admitted, in the order the refusal names them.
    roles: tuple[Role, ...]
    #: The caller's partner must take part in the case named by ``case_id``.
    case_scoped: bool = False
    #: It reads another partner's data: each item goes through the consent decision.
    consent: bool = False
    _admitted: frozenset[Role] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_admitted", frozenset(self.roles))

    def admit(self, caller: Caller) -> Caller:
        """``caller`` if its role is admitted; PERMISSION_DENIED ``ROLE_NOT_ALLOWED``
        otherwise (the message the domain's own ``Caller.require`` gives)."""
        if caller.role not in self._admitted:
            if not self.roles:
                raise PermissionDenied(
                    "no caller may call this method", reason="METHOD_NOT_ALLOWED"
                )
            caller.require(*self.roles)
        return caller


#: The rule of a method the table does not declare: nobody is admitted.
UNDECLARED = Rule(roles=())

_PARTNER_SIDE = (Role.PARTNER, Role.ADVISOR)
_ANYONE = (Role.PARTNER, Role.ADVISOR, Role.COMPLIANCE, Role.ADMIN)
_ADMIN = (Role.ADMIN,)


def _service(module: ModuleType, service: str, **rules: Rule) -> dict[str, Rule]:
    """The rules of one service's methods, by full method name (an unknown method name
    fails at import)."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    return {method_path(descriptor.methods_by_name[name]): rule for name, rule in rules.items()}


#: The table: every RPC of the contract and its one rule.
RULES: Mapping[str, Rule] = MappingProxyType(
    {
        **_service(
            admin_pb2,
            "AdminService",
            RegisterPartner=Rule(_ADMIN),
            ListPartners=Rule(_ANYONE),
            DefineService=Rule(_ADMIN),
            GetService=Rule(_ANYONE),
            ListServices=Rule(_ANYONE),
            RetireService=Rule(_ADMIN),
            DefineSharingAgreement=Rule(_ADMIN),
            ListSharingAgreements=Rule(_ANYONE),
        ),
        **_service(
            audit_pb2,
            "AuditService",
            QueryAudit=Rule((Role.COMPLIANCE, Role.ADMIN)),
            # The log's checkpoints and proofs hold hashes only: anyone may verify.
            GetCheckpoint=Rule(_ANYONE),
            GetInclusionProof=Rule(_ANYONE),
            GetConsistencyProof=Rule(_ANYONE),
            # A partner about its own customer; compliance about any subject.
            SubjectAccessReport=Rule((Role.PARTNER, Role.ADVISOR, Role.COMPLIANCE)),
        ),
        **_service(
            cases_pb2,
            "CaseService",
            OpenCase=Rule(_PARTNER_SIDE),
            GetCaseView=Rule(_PARTNER_SIDE, case_scoped=True, consent=True),
            # The caller's cases; with a customer and a purpose, other partners' cases
            # of that customer as far as consent allows.
            ListCases=Rule(_PARTNER_SIDE, consent=True),
            WatchCase=Rule(_PARTNER_SIDE, case_scoped=True, consent=True),
            AppendInteraction=Rule(_PARTNER_SIDE, case_scoped=True),
            SubmitFinding=Rule(_PARTNER_SIDE, case_scoped=True),
            AcceptOwnership=Rule(_PARTNER_SIDE, case_scoped=True),
            DeclineOwnership=Rule(_PARTNER_SIDE, case_scoped=True),
            ResolveCase=Rule(_PARTNER_SIDE, case_scoped=True),
            ConfirmResolution=Rule(_PARTNER_SIDE, case_scoped=True),
            ReopenCase=Rule(_PARTNER_SIDE, case_scoped=True),
        ),
        **_service(
            consents_pb2,
            "ConsentService",
            GrantConsent=Rule(_PARTNER_SIDE),
            RevokeConsent=Rule(_PARTNER_SIDE),
            # A partner lists its customer's consents that involve it; compliance, all.
            ListConsents=Rule((Role.PARTNER, Role.ADVISOR, Role.COMPLIANCE)),
            RequestConsent=Rule(_PARTNER_SIDE, case_scoped=True),
            RefuseConsentRequest=Rule(_PARTNER_SIDE),
            # The public key that verifies consent receipts.
            GetReceiptKey=Rule(_ANYONE),
        ),
        **_service(
            identity_pb2,
            "IdentityService",
            IssueLinkCode=Rule(_PARTNER_SIDE),
            RedeemLinkCode=Rule(_PARTNER_SIDE),
            Unlink=Rule(_PARTNER_SIDE),
            ResolveSubject=Rule(_PARTNER_SIDE),
            RegisterIdentifiers=Rule(_PARTNER_SIDE),
            ConfirmMatch=Rule(_PARTNER_SIDE),
            EraseCustomer=Rule(_PARTNER_SIDE),
        ),
        **_service(
            work_pb2,
            "PartnerWorkService",
            # The partner's backend only. Its work items (ownership offers, notices)
            # carry what was composed from other partners' findings.
            Subscribe=Rule((Role.PARTNER,), consent=True),
            Acknowledge=Rule((Role.PARTNER,)),
        ),
    }
)


class MissingRule(RuntimeError):
    """A server would serve a contract method the table has no (valid) rule for."""


def require_rules(service_names: Iterable[str], rules: Mapping[str, Rule] = RULES) -> None:
    """Refuse (``MissingRule``) unless every method of the named contract services has a
    rule, and every case-scoped one names its case in ``case_id``."""
    problems: list[str] = []
    for path, method in CONTRACT_METHODS.items():
        if method.containing_service.full_name not in service_names:
            continue
        rule = rules.get(path)
        if rule is None or not rule.roles:
            problems.append(f"{path}: no rule")
        elif rule.case_scoped and "case_id" not in method.input_type.fields_by_name:
            problems.append(f"{path}: case-scoped, but its request has no case_id")
    if problems:
        raise MissingRule("authorization table incomplete: " + "; ".join(problems))
