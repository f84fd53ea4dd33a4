"""Money: integer minor units plus an ISO 4217 currency code. Never a float.

One table says which currencies the platform handles, their exponents (minor units per
major unit) and the largest amount one movement may carry.
"""

from __future__ import annotations

from dataclasses import dataclass

# ISO 4217 exponents of the currencies we hold. A currency not listed here is refused.
CURRENCY_EXPONENTS: dict[str, int] = {
    "EUR": 2,
    "USD": 2,
    "GBP": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "CHF": 2,
    "PLN": 2,
    "JPY": 0,
    "BHD": 3,
}

# Per movement, in minor units: far above any real payment, far below the 64-bit range the
# ledger's balances live in (9.2e18), so a sum of many maximal movements cannot overflow
# unnoticed. Larger sums are refused, not rounded.
MAX_AMOUNT_MINOR = 10**15


class InvalidMoney(ValueError):
    """An amount or currency the platform cannot hold; ``field`` names which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def validate_currency(currency: str) -> str:
    if currency not in CURRENCY_EXPONENTS:
        raise InvalidMoney("currency", f"unsupported currency {currency!r}")
    return currency


def validate_amount(amount: object) -> int:
    # bool is an int in Python; True is not one cent.
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidMoney("amount", "amount must be an integer number of minor units")
    if amount <= 0:
        raise InvalidMoney("amount", "amount must be positive")
    if amount > MAX_AMOUNT_MINOR:
        raise InvalidMoney("amount", f"amount exceeds the limit of {MAX_AMOUNT_MINOR} minor units")
    return amount


@dataclass(frozen=True)
class Money:
    amount: int
    currency: str

    def __post_init__(self) -> None:
        validate_amount(self.amount)
        validate_currency(self.currency)

    def __str__(self) -> str:
        exponent = CURRENCY_EXPONENTS[self.currency]
        major, minor = divmod(self.amount, 10**exponent)
        if not exponent:
            return f"{major} {self.currency}"
        return f"{major}.{minor:0{exponent}d} {self.currency}"
