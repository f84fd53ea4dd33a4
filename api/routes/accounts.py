"""Accounts as their owners see them: balances and history. Customers see only their own."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from pydantic import AwareDatetime

from api.auth import CurrentPrincipal, Principal, require_role
from api.deps import LedgerDep
from api.errors import ProblemError
from infra.ledger_store import LedgerStore
from models.ledger import Account, AccountKind, NewAccount
from models.payment import wallet_account_id
from models.payment_schemas import WalletCreate
from models.schemas import AccountList, AccountPublic, BalanceAsOf, EntryPage, EntryPublic

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])

Customer = Annotated[Principal, require_role("customer")]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AccountPublic)
async def open_wallet(
    body: WalletCreate, principal: Customer, ledger: LedgerDep, response: Response
) -> AccountPublic:
    """Open the caller's wallet in a currency; the same currency again returns it (200)."""
    account_id = wallet_account_id(principal.subject, body.currency)
    existing = await ledger.get_account(account_id)
    if existing is not None:
        response.status_code = status.HTTP_200_OK
        return AccountPublic.of(existing)
    # A liability of the platform to the customer, which can never go below zero. Two
    # requests racing past the read above open it once; the one that did not is told 200.
    account, opened = await ledger.open_or_get_account(
        NewAccount(
            id=account_id,
            currency=body.currency,
            kind=AccountKind.LIABILITY,
            owner=principal.subject,
            code="customer_wallet",
            debits_must_not_exceed_credits=True,
        )
    )
    if not opened:
        response.status_code = status.HTTP_200_OK
    return AccountPublic.of(account)


async def _visible_account(ledger: LedgerStore, principal: Principal, account_id: str) -> Account:
    account = await ledger.get_account(account_id)
    # Another customer's account answers exactly like a missing one: no existence leak.
    if account is None or not (principal.is_staff or account.owner == principal.subject):
        raise ProblemError(404, "account_not_found", "No such account", f"no account {account_id}")
    return account


@router.get("", response_model=AccountList)
async def list_accounts(
    principal: CurrentPrincipal,
    ledger: LedgerDep,
    owner: Annotated[str | None, Query(max_length=100)] = None,
) -> AccountList:
    """The caller's accounts; operators and admins may name an owner."""
    if not principal.is_staff:
        owner = principal.subject
    elif owner is None:
        raise ProblemError(
            422, "validation_failed", "owner is required", "staff must name an owner",
            errors=[{"field": "owner", "code": "missing", "message": "owner is required"}],
        )  # fmt: skip
    return AccountList(data=[AccountPublic.of(a) for a in await ledger.list_accounts(owner=owner)])


@router.get("/{account_id}", response_model=AccountPublic)
async def get_account(
    account_id: str, principal: CurrentPrincipal, ledger: LedgerDep
) -> AccountPublic:
    """One account with its posted, pending and available balance."""
    return AccountPublic.of(await _visible_account(ledger, principal, account_id))


@router.get("/{account_id}/balance", response_model=BalanceAsOf)
async def get_balance_as_of(
    account_id: str,
    principal: CurrentPrincipal,
    ledger: LedgerDep,
    as_of: Annotated[AwareDatetime, Query(description="an ISO 8601 time with its offset")],
) -> BalanceAsOf:
    """The posted balance at a moment in the past (holds are not part of history)."""
    account = await _visible_account(ledger, principal, account_id)
    posted = await ledger.balance_as_of(account.id, as_of)
    return BalanceAsOf(account_id=account.id, currency=account.currency, as_of=as_of, posted=posted)


@router.get("/{account_id}/entries", response_model=EntryPage)
async def list_entries(
    account_id: str,
    principal: CurrentPrincipal,
    ledger: LedgerDep,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,19}$")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> EntryPage:
    """Posted entries, oldest first, with the running balance; page with ``next_cursor``."""
    await _visible_account(ledger, principal, account_id)
    entries = await ledger.entries(
        account_id, after_seq=int(cursor) if cursor else 0, limit=limit + 1
    )
    # Both legs of a transfer between an account and itself cannot exist (the ledger
    # refuses it), so seq is a sound cursor: one entry per transfer per account.
    page, more = entries[:limit], len(entries) > limit
    return EntryPage(
        data=[EntryPublic.of(e) for e in page],
        next_cursor=str(page[-1].seq) if more and page else None,
    )
