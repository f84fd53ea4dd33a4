"""Builders for ledger tests: accounts with readable names, unique per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text

from infra.ledger_store import LedgerStore
from models.ledger import Account, AccountKind, NewAccount, TransferKind, TransferRequest


class AccountFactory:
    """``await accounts.wallet("alice")`` opens ``acc_<test>_alice``, a customer wallet."""

    def __init__(self, ledger: LedgerStore, unique: str) -> None:
        self.ledger = ledger
        self.unique = unique
        self._ids = itertools.count(1)

    def account_id(self, name: str) -> str:
        return f"acc_{self.unique}_{name}"

    def transfer_id(self, name: str) -> str:
        return f"txf_{self.unique}_{name}"

    async def wallet(self, owner: str, currency: str = "EUR") -> Account:
        """A customer's money held by us: a liability that must never go below zero."""
        return await self.ledger.open_account(
            NewAccount(
                id=self.account_id(f"{owner}_{currency.lower()}"),
                currency=currency,
                kind=AccountKind.LIABILITY,
                owner=owner,
                code="customer_wallet",
                debits_must_not_exceed_credits=True,
            )
        )

    async def platform(
        self, code: str, currency: str = "EUR", kind: AccountKind = AccountKind.ASSET
    ) -> Account:
        """A platform account with no balance limit (clearing, fees, liquidity, …)."""
        return await self.ledger.open_account(
            NewAccount(
                id=self.account_id(f"{code}_{currency.lower()}"),
                currency=currency,
                kind=kind,
                owner="platform",
                code=code,
            )
        )

    def move(
        self,
        debit: Account,
        credit: Account,
        amount: int,
        *,
        name: str | None = None,
        kind: TransferKind = TransferKind.POSTED,
        timeout_seconds: int | None = None,
    ) -> TransferRequest:
        return TransferRequest(
            id=self.transfer_id(name or f"t{next(self._ids)}"),
            kind=kind,
            debit_account_id=debit.id,
            credit_account_id=credit.id,
            amount=amount,
            currency=debit.currency,
            timeout_seconds=timeout_seconds,
        )

    def resolve(
        self, hold_id: str, kind: TransferKind, *, name: str, amount: int | None = None
    ) -> TransferRequest:
        """The post (``POST_PENDING``, in part with ``amount``) or void of a hold."""
        return TransferRequest(
            id=self.transfer_id(name), kind=kind, pending_id=hold_id, amount=amount
        )

    async def fund(self, wallet: Account, amount: int, *, name: str | None = None) -> None:
        """Top a wallet up from the card clearing account, as a captured card payment would."""
        clearing = await self.platform("card_clearing", wallet.currency)
        await self.ledger.create_transfer(self.move(clearing, wallet, amount, name=name))

    async def available(self, account: Account) -> int:
        current = await self.ledger.get_account(account.id)
        assert current is not None
        return current.balance.available


@contextmanager
def expired_holds_kept(engine: Engine) -> Iterator[None]:
    """No expired hold is released while inside: the release (run every minute by the
    ``ledger-roll-up`` schedule) waits. For tests that resolve their expired holds
    themselves and would otherwise race it."""
    with engine.connect() as conn, conn.begin():
        # Each release takes this row FOR UPDATE first; a share lock holds it off, and
        # tests holding it at the same time do not wait for each other.
        conn.execute(text("SELECT 1 FROM ledger_hold_expiry_sweep FOR SHARE"))
        yield
