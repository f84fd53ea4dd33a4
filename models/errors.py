"""The error taxonomy, drawn once.

    PlatformError
    ├── BusinessRuleError      a rule of the business said no. Final: retrying the same
    │   │                      request gives the same answer. Workflows turn these into a
    │   │                      business outcome (declined, rejected); activities raise them
    │   │                      as non-retryable ApplicationErrors named after the class.
    │   └── LedgerError        one class per accounting rule, each with a stable ``code``
    │                          (the code the database function returns and the API shows)
    └── TransientError         the world was briefly unavailable (a deadlock, a restart);
                               retrying the same request may succeed.

HTTP mapping (api/errors.py): a BusinessRuleError answers with its ``status`` and ``code``
as problem+json.
"""

from __future__ import annotations

from typing import ClassVar


class PlatformError(Exception):
    pass


class BusinessRuleError(PlatformError):
    code: ClassVar[str] = "business_rule"
    status: ClassVar[int] = 422

    def __init__(self, detail: str | None = None, *, index: int | None = None) -> None:
        super().__init__(detail or self.code)
        self.detail = detail or self.code
        # In a linked batch, the position of the transfer that broke the rule.
        self.index = index


class TransientError(PlatformError):
    pass


class LedgerError(BusinessRuleError):
    code = "ledger_error"


class AccountNotFound(LedgerError):
    code = "account_not_found"
    status = 404


class AccountClosed(LedgerError):
    code = "account_closed"
    status = 409


class AccountsMustBeDifferent(LedgerError):
    code = "accounts_must_be_different"


class CurrencyMismatch(LedgerError):
    code = "currency_mismatch"


class AmountMustBePositive(LedgerError):
    code = "amount_must_be_positive"


class InsufficientFunds(LedgerError):
    """The debit would take the account past its credits (``debits_must_not_exceed_credits``)."""

    code = "insufficient_funds"
    status = 409


class CreditLimitExceeded(LedgerError):
    """The credit would take the account past its debits (``credits_must_not_exceed_debits``)."""

    code = "credit_limit_exceeded"
    status = 409


class PendingTransferNotFound(LedgerError):
    code = "pending_transfer_not_found"
    status = 404


class PendingTransferAlreadyResolved(LedgerError):
    code = "pending_transfer_already_resolved"
    status = 409


class PendingTransferExpired(LedgerError):
    code = "pending_transfer_expired"
    status = 409


class ExceedsPendingAmount(LedgerError):
    code = "exceeds_pending_amount"


class LinkedTransferFailed(LedgerError):
    """Another transfer of the same linked batch broke a rule, so this one did not happen."""

    code = "linked_transfer_failed"


class BalanceOverflow(LedgerError):
    code = "balance_overflow"


class IdempotencyConflict(LedgerError):
    """The id (idempotency key) was used before with different fields."""

    code = "idempotency_conflict"
    status = 409


class InvalidTransfer(LedgerError):
    code = "invalid_transfer"


class ConcurrentDuplicate(TransientError):
    """Another request with the same id is in flight; retrying returns its outcome."""


LEDGER_ERRORS: dict[str, type[LedgerError]] = {
    cls.code: cls
    for cls in (
        AccountNotFound,
        AccountClosed,
        AccountsMustBeDifferent,
        CurrencyMismatch,
        AmountMustBePositive,
        InsufficientFunds,
        CreditLimitExceeded,
        PendingTransferNotFound,
        PendingTransferAlreadyResolved,
        PendingTransferExpired,
        ExceedsPendingAmount,
        LinkedTransferFailed,
        BalanceOverflow,
        IdempotencyConflict,
        InvalidTransfer,
    )
}
