"""Onboarding request and response bodies of the API (pydantic).

The application carries personal data; the API stores it encrypted and hands the workflow
ids only. What an app reads back is the status and what is missing — never the screening,
the risk reasons or anything about a sanctions list.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from anyascii import anyascii
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from models.schemas import Currency

Name = Field(min_length=1, max_length=100)
Country = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")


class AddressIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line1: str = Field(min_length=1, max_length=200)
    line2: str | None = Field(default=None, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Country


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["passport", "id_card", "driving_licence"]
    number: str = Field(min_length=3, max_length=40, pattern=r"^[A-Za-z0-9-]+$")


class ApplicationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    given_name: str = Name
    family_name: str = Name
    date_of_birth: date
    email: EmailStr
    phone: str = Field(pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164")
    country: str = Country
    address: AddressIn
    document: DocumentIn | None = None
    currency: Currency

    @field_validator("given_name", "family_name")
    @classmethod
    def _screenable(cls, name: str) -> str:
        # Sanctions screening compares names as ASCII words (infra/sanctions.py): a name
        # with no letter or digit in any script would leave nothing to screen, and the
        # application would fail after its user was created.
        if not any(ch.isascii() and ch.isalnum() for ch in anyascii(name)):
            raise ValueError("a name needs at least one letter or digit")
        return name

    def residence_problems(self) -> list[dict[str, str]]:
        """The country of residence and the address's must agree: the country decides the
        application's risk rating, so one that differs from the address would let a
        high-risk residence be rated as another."""
        if self.address.country == self.country:
            return []
        return [
            {
                "field": "address.country",
                "code": "country_mismatch",
                "message": f"the address is in {self.address.country}, the residence "
                f"country given is {self.country}",
            }
        ]

    @field_validator("date_of_birth")
    @classmethod
    def _adult_and_past(cls, born: date) -> date:
        today = date.today()  # noqa: DTZ011 - a calendar date, not an instant
        age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
        if age < 18:
            raise ValueError("the applicant must be at least 18")
        if age > 130:
            raise ValueError("date_of_birth is not plausible")
        return born


class ApplicationPublic(BaseModel):
    """What the app that applied sees."""

    id: str
    object: Literal["onboarding"] = "onboarding"
    status: str
    missing: list[str]
    waiting_for: str | None = None
    created_at: datetime
    completed_at: datetime | None = None


class ScreeningPublic(BaseModel):
    possible_match: bool
    best_score: float
    threshold: float
    algorithm: str
    list_version: str
    entry_id: str | None
    entry_name: str | None
    topics: list[str]
    birth_date_match: bool | None


class ApplicationForStaff(ApplicationPublic):
    """What operators and compliance officers see besides."""

    customer_id: str
    user_id: str | None
    risk_tier: str | None
    risk_reasons: list[str]
    kyc_verdict: str | None
    screening: ScreeningPublic | None
    review_id: str | None
    decision_reason: str | None
    wallet_account_id: str | None


class CancelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=3, max_length=500)
