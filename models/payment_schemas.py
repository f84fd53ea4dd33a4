"""Payment request and response bodies of the API (pydantic).

A client says what it wants moved; it never sets a status, a fee, a risk band or an id:
unknown fields are refused by name (``extra="forbid"``), so ``{"status": "succeeded"}``
is a 422 that names ``status``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.money import MAX_AMOUNT_MINOR
from models.schemas import Currency

_SOURCE, _DESTINATION = "source_account_id", "destination_account_id"
_METHOD, _BANK = "payment_method", "payout_destination"
# kind: (required fields, forbidden fields)
_KIND_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "topup": ({_DESTINATION, _METHOD}, {_SOURCE, _BANK}),
    "transfer": ({_SOURCE, _DESTINATION}, {_METHOD, _BANK}),
    "payout": ({_SOURCE, _BANK}, {_DESTINATION, _METHOD}),
}


class PaymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["topup", "transfer", "payout"]
    amount: int = Field(strict=True, gt=0, le=MAX_AMOUNT_MINOR, description="minor units")
    currency: Currency
    source_account_id: str | None = Field(default=None, pattern=r"^acc_[0-9a-z_]{1,60}$")
    destination_account_id: str | None = Field(default=None, pattern=r"^acc_[0-9a-z_]{1,60}$")
    payment_method: str | None = Field(
        default=None,
        pattern=r"^pm_[A-Za-z0-9_]{1,100}$",
        description="the card gateway's payment-method token (topup); card data never comes here",
    )
    payout_destination: str | None = Field(
        default=None,
        pattern=r"^ba_[A-Za-z0-9_]{1,100}$",
        description="the card gateway's bank-account token (payout)",
    )

    def kind_problems(self) -> list[dict[str, str]]:
        """Each field the kind needs and lacks, or has and must not (one entry per field)."""
        required, forbidden = _KIND_FIELDS[self.kind]
        missing = [
            {"field": name, "code": "missing", "message": f"{name} is required for a {self.kind}"}
            for name in sorted(required)
            if getattr(self, name) is None
        ]
        extra = [
            {
                "field": name,
                "code": "not_allowed",
                "message": f"{name} is not part of a {self.kind}",
            }
            for name in sorted(forbidden)
            if getattr(self, name) is not None
        ]
        return missing + extra

    def fingerprint(self) -> dict[str, Any]:
        """What makes two requests the same request (for Idempotency-Key reuse)."""
        return self.model_dump(mode="json", exclude_none=True)


class RefundCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: int | None = Field(
        default=None, strict=True, gt=0, le=MAX_AMOUNT_MINOR,
        description="minor units; default: everything not yet refunded",
    )  # fmt: skip


class RiskPublic(BaseModel):
    band: str
    reasons: list[str]
    # For apps and staff only: a customer who could read the model's score of each try
    # could probe it for the amounts and times it lets through (None for customers).
    score: float | None = None
    model_version: str | None = None


class TimelinePublic(BaseModel):
    at: datetime
    event: str
    detail: str = ""


class PaymentPublic(BaseModel):
    id: str
    object: Literal["payment"] = "payment"
    kind: str
    status: str
    amount: int
    currency: str
    source_account_id: str | None
    destination_account_id: str | None
    payment_method: str | None
    payout_destination: str | None
    decline_code: str | None
    risk: RiskPublic | None
    review_id: str | None
    captured_amount: int
    refunded_amount: int
    waiting_for: str | None = None
    timeline: list[TimelinePublic]
    created_at: datetime
    completed_at: datetime | None


class PaymentList(BaseModel):
    data: list[PaymentPublic]
    next_cursor: str | None


class RefundPublic(BaseModel):
    id: str
    object: Literal["refund"] = "refund"
    payment_id: str
    amount: int
    status: str
    failure_code: str | None
    created_at: datetime
    completed_at: datetime | None


class WalletCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    currency: Currency
