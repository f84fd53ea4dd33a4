"""The ledger for operators and admins: open accounts, manual adjustments, trial balance.

Manual transfers take an ``Idempotency-Key``: the same key and body answer with the
original result; the same key with another body is ``409 idempotency_key_reused``. Every
first success is written to the audit log in the same transaction as the transfers.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Annotated

from fastapi import APIRouter, Header, Response, status

from api.auth import StaffPrincipal
from api.deps import LedgerDep
from api.errors import ProblemError, invalid_fields
from infra.ledger_store import AuditNote, ledger_error
from models.errors import IdempotencyConflict
from models.ledger import NewAccount, TransferRequest
from models.schemas import (
    AccountCreate,
    AccountPublic,
    ManualTransferCreate,
    TransferBatchPublic,
    TransferPublic,
    TrialBalanceLinePublic,
    TrialBalancePublic,
)

router = APIRouter(prefix="/v1/ledger", tags=["ledger"])

IdempotencyKey = Annotated[
    str,
    Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$"),
]


def _key_digest(scope: str, key: str) -> str:
    """A stable id fragment from a client's key: any printable key, fixed length, [a-z2-7]."""
    digest = hashlib.sha256(f"{scope}:{key}".encode()).digest()
    return base64.b32encode(digest).decode().lower().rstrip("=")[:26]


def _key_reused() -> ProblemError:
    return ProblemError(
        409,
        "idempotency_key_reused",
        "Idempotency-Key reused with a different request",
        "send a new Idempotency-Key for a different request",
    )


@router.post("/accounts", status_code=status.HTTP_201_CREATED, response_model=AccountPublic)
async def open_account(
    body: AccountCreate,
    key: IdempotencyKey,
    principal: StaffPrincipal,
    ledger: LedgerDep,
    response: Response,
) -> AccountPublic:
    """Open a ledger account (customer wallet, clearing, fees, liquidity, …)."""
    account = NewAccount(id=f"acc_{_key_digest('account', key)}", **body.model_dump())
    try:
        opened, created = await ledger.open_or_get_account(account)
    except IdempotencyConflict as exc:
        raise _key_reused() from exc
    if not created:  # the same request under the same key: its answer again
        response.headers["Idempotent-Replayed"] = "true"
    return AccountPublic.of(opened)


@router.post("/transfers", status_code=status.HTTP_201_CREATED, response_model=TransferBatchPublic)
async def create_manual_transfer(
    body: ManualTransferCreate,
    key: IdempotencyKey,
    principal: StaffPrincipal,
    ledger: LedgerDep,
    response: Response,
) -> TransferBatchPublic:
    """A manual adjustment: one transfer, or a linked batch that moves all or nothing."""
    missing = body.missing_fields()
    if missing:
        # Before the ledger sees it: a refusal there would be remembered under the key, and
        # the corrected request would then be a conflict.
        raise invalid_fields(missing)
    prefix = f"man_{_key_digest('transfer', key)}"
    # Each leg carries a digest of the whole request, so the ledger's per-transfer replay
    # check sees a different batch under the same key (a leg left out or changed) as a
    # different request: 409, never a replay of part of the first batch.
    request_digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()[:32]
    metadata = {"reason": body.reason, "requested_by": principal.subject,
                "request": request_digest}  # fmt: skip
    requests = [
        TransferRequest(id=f"{prefix}_{i}", metadata=metadata, **leg.model_dump())
        for i, leg in enumerate(body.transfers)
    ]
    outcome = await ledger.submit_outcome(
        requests,
        audit=AuditNote(
            actor=principal.subject,
            action="ledger.manual_transfer",
            details={"reason": body.reason},
        ),
    )
    if not outcome["ok"]:
        error = ledger_error(outcome)
        if isinstance(error, IdempotencyConflict):
            raise _key_reused()
        raise ProblemError(
            error.status, error.code, "The ledger refused the transfer", error.detail,
            index=error.index,
        )  # fmt: skip
    if outcome["replayed"]:
        response.headers["Idempotent-Replayed"] = "true"
    transfers = await ledger.get_transfers([t["id"] for t in outcome["transfers"]])
    return TransferBatchPublic(transfers=[TransferPublic.of(t) for t in transfers])


@router.get("/trial-balance", response_model=TrialBalancePublic)
async def trial_balance(principal: StaffPrincipal, ledger: LedgerDep) -> TrialBalancePublic:
    """Per currency, all debits against all credits, posted and pending."""
    lines = await ledger.trial_balance()
    return TrialBalancePublic(
        balanced=all(line.balanced for line in lines),
        currencies=[TrialBalanceLinePublic.of(line) for line in lines],
    )
