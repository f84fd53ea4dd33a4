"""The ledger's vocabulary: accounts, transfers, balances, entries (pure data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class AccountKind(StrEnum):
    ASSET = "asset"
    LIABILITY = "liability"
    EQUITY = "equity"
    REVENUE = "revenue"
    EXPENSE = "expense"

    @property
    def credit_normal(self) -> bool:
        """Liabilities, equity and revenue grow with credits; assets and expenses with debits."""
        return self in {AccountKind.LIABILITY, AccountKind.EQUITY, AccountKind.REVENUE}


class TransferKind(StrEnum):
    POSTED = "posted"  # single phase: moves money now
    PENDING = "pending"  # a hold: reserves money until posted, voided or expired
    POST_PENDING = "post_pending"  # completes a hold, in full or in part
    VOID_PENDING = "void_pending"  # releases a hold


@dataclass(frozen=True)
class NewAccount:
    id: str
    currency: str
    kind: AccountKind
    owner: str  # a customer id, or "platform"
    code: str  # chart-of-accounts code: customer_wallet, clearing, fees, liquidity, …
    debits_must_not_exceed_credits: bool = False
    credits_must_not_exceed_debits: bool = False


@dataclass(frozen=True)
class Balance:
    """In the account's normal direction, in minor units.

    ``posted``: what has happened; ``pending``: holds in flight (net, may be negative);
    ``available``: posted less outgoing holds, what the owner can spend now.
    """

    posted: int
    pending: int
    available: int


@dataclass(frozen=True)
class Account:
    id: str
    currency: str
    kind: AccountKind
    owner: str
    code: str
    debits_must_not_exceed_credits: bool
    credits_must_not_exceed_debits: bool
    closed: bool
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    created_at: datetime

    @property
    def balance(self) -> Balance:
        if self.kind.credit_normal:
            posted = self.credits_posted - self.debits_posted
            pending = self.credits_pending - self.debits_pending
            available = posted - self.debits_pending
        else:
            posted = self.debits_posted - self.credits_posted
            pending = self.debits_pending - self.credits_pending
            available = posted - self.credits_pending
        return Balance(posted=posted, pending=pending, available=available)


@dataclass(frozen=True)
class TransferRequest:
    """One transfer to create. ``id`` is the idempotency key: the same id with the same
    fields returns the original outcome, with other fields it is a conflict."""

    id: str
    kind: TransferKind = TransferKind.POSTED
    debit_account_id: str | None = None
    credit_account_id: str | None = None
    amount: int | None = None  # post_pending: None posts the full held amount
    currency: str | None = None
    pending_id: str | None = None
    timeout_seconds: int | None = None  # pending only: the hold expires after this
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "kind": str(self.kind)}
        for name in ("debit_account_id", "credit_account_id", "amount", "currency", "pending_id",
                     "timeout_seconds"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.metadata:
            body["metadata"] = self.metadata
        return body


@dataclass(frozen=True)
class Transfer:
    id: str
    seq: int
    kind: TransferKind
    debit_account_id: str
    credit_account_id: str
    amount: int
    currency: str
    pending_id: str | None
    expires_at: datetime | None
    batch_id: str | None
    metadata: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Entry:
    """One posted movement on one account, with the account's posted balance after it."""

    seq: int
    transfer_id: str
    side: str  # "debit" | "credit"
    amount: int
    running_balance: int
    created_at: datetime


@dataclass(frozen=True)
class TrialBalanceLine:
    currency: str
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int

    @property
    def balanced(self) -> bool:
        return (
            self.debits_posted == self.credits_posted
            and self.debits_pending == self.credits_pending
        )
