"""Request and response bodies of the public API (``XCreate`` in, ``XPublic`` out).

Money is always an integer of minor units next to an ISO 4217 code: a float, a string or a
boolean amount is refused with a field-level error, never rounded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    field_validator,
)

from models.ledger import Account, AccountKind, Entry, Transfer, TransferKind, TrialBalanceLine
from models.money import MAX_AMOUNT_MINOR, validate_currency

Currency = Annotated[str, AfterValidator(validate_currency)]
AmountMinor = Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT_MINOR)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccountCreate(_Body):
    currency: Currency
    kind: AccountKind
    owner: str = Field(min_length=1, max_length=100, description="customer id or 'platform'")
    code: str = Field(min_length=1, max_length=60, pattern=r"^[a-z][a-z0-9_]*$")
    debits_must_not_exceed_credits: bool = False
    credits_must_not_exceed_debits: bool = False

    @field_validator("credits_must_not_exceed_debits")
    @classmethod
    def _one_limit(cls, limited: bool, info: ValidationInfo) -> bool:
        # An account with both limits could never move (the ledger's CHECK refuses it too).
        if limited and info.data.get("debits_must_not_exceed_credits"):
            raise ValueError("an account takes one balance limit at most")
        return limited


class BalancePublic(BaseModel):
    posted: int
    pending: int
    available: int


class AccountPublic(BaseModel):
    id: str
    currency: str
    kind: AccountKind
    owner: str
    code: str
    closed: bool
    flags: list[str]
    balance: BalancePublic
    created_at: datetime

    @classmethod
    def of(cls, account: Account) -> AccountPublic:
        flags = [
            name
            for name in ("debits_must_not_exceed_credits", "credits_must_not_exceed_debits")
            if getattr(account, name)
        ]
        b = account.balance
        return cls(
            id=account.id,
            currency=account.currency,
            kind=account.kind,
            owner=account.owner,
            code=account.code,
            closed=account.closed,
            flags=flags,
            balance=BalancePublic(posted=b.posted, pending=b.pending, available=b.available),
            created_at=account.created_at,
        )


class BalanceAsOf(BaseModel):
    account_id: str
    currency: str
    as_of: datetime
    posted: int


class AccountList(BaseModel):
    data: list[AccountPublic]


class EntryPublic(BaseModel):
    transfer_id: str
    side: Literal["debit", "credit"]
    amount: int
    running_balance: int
    created_at: datetime

    @classmethod
    def of(cls, entry: Entry) -> EntryPublic:
        return cls(
            transfer_id=entry.transfer_id,
            side="debit" if entry.side == "debit" else "credit",
            amount=entry.amount,
            running_balance=entry.running_balance,
            created_at=entry.created_at,
        )


class EntryPage(BaseModel):
    data: list[EntryPublic]
    next_cursor: str | None


class TransferLeg(_Body):
    kind: TransferKind = TransferKind.POSTED
    debit_account_id: str | None = Field(default=None, max_length=64)
    credit_account_id: str | None = Field(default=None, max_length=64)
    amount: AmountMinor | None = None
    currency: Currency | None = None
    pending_id: str | None = Field(default=None, max_length=128)
    timeout_seconds: StrictInt | None = Field(default=None, gt=0, le=30 * 24 * 3600)


# What each kind of leg cannot do without (the ledger refuses it otherwise, as a remembered
# invalid_transfer naming no field).
_LEG_NEEDS = {
    TransferKind.POSTED: ("debit_account_id", "credit_account_id", "amount", "currency"),
    TransferKind.PENDING: ("debit_account_id", "credit_account_id", "amount", "currency"),
    TransferKind.POST_PENDING: ("pending_id",),
    TransferKind.VOID_PENDING: ("pending_id",),
}


class ManualTransferCreate(_Body):
    """A manual adjustment by an operator: one transfer, or several as a linked batch."""

    transfers: list[TransferLeg] = Field(min_length=1, max_length=16)
    reason: str = Field(min_length=3, max_length=500, description="why; kept in the audit log")

    def missing_fields(self) -> list[dict[str, str]]:
        """Each field a leg's kind needs and the leg lacks (one entry per field)."""
        return [
            {
                "field": f"transfers.{i}.{name}",
                "code": "missing",
                "message": f"{name} is required for a {leg.kind} transfer",
            }
            for i, leg in enumerate(self.transfers)
            for name in _LEG_NEEDS[leg.kind]
            if getattr(leg, name) is None
        ]


class TransferPublic(BaseModel):
    id: str
    kind: TransferKind
    debit_account_id: str
    credit_account_id: str
    amount: int
    currency: str
    pending_id: str | None
    expires_at: datetime | None
    metadata: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, t: Transfer) -> TransferPublic:
        return cls(
            id=t.id,
            kind=t.kind,
            debit_account_id=t.debit_account_id,
            credit_account_id=t.credit_account_id,
            amount=t.amount,
            currency=t.currency,
            pending_id=t.pending_id,
            expires_at=t.expires_at,
            metadata=t.metadata,
            created_at=t.created_at,
        )


class TransferBatchPublic(BaseModel):
    transfers: list[TransferPublic]


class TrialBalanceLinePublic(BaseModel):
    currency: str
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    balanced: bool

    @classmethod
    def of(cls, line: TrialBalanceLine) -> TrialBalanceLinePublic:
        return cls(
            currency=line.currency,
            debits_posted=line.debits_posted,
            credits_posted=line.credits_posted,
            debits_pending=line.debits_pending,
            credits_pending=line.credits_pending,
            balanced=line.balanced,
        )


class TrialBalancePublic(BaseModel):
    balanced: bool
    currencies: list[TrialBalanceLinePublic]
