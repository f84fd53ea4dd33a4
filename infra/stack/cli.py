"""``bfc``: the developer's command for the local stack and the database schema.

bfc up | down | status [--json]          the whole platform: servers, API and worker
bfc stack up | down | status | logs NAME  the same, one service at a time if named
bfc db upgrade | current                 Alembic migrations of the ledger database
bfc fraud train [--seed N] [--count N]   train the fraud model, save it and make it current
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from infra.settings import Settings, get_settings
from infra.stack.base import StackError
from infra.stack.launcher import ALL, Stack

DEV_LOGINS = (
    "alice, bob (customer) · olivia (operator) · carol, cora (compliance_officer) · "
    "admin (admin); password dev-<username>; app client bfc-app / dev-bfc-app-secret"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bfc", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add_lifecycle(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        up = sub.add_parser("up", help="start (idempotent) and wait until healthy")
        up.add_argument("services", nargs="*", metavar="SERVICE", help=", ".join(ALL))
        down = sub.add_parser("down", help="stop what this stack started; data is kept")
        down.add_argument("services", nargs="*", metavar="SERVICE", help=", ".join(ALL))
        status = sub.add_parser("status", help="health of every service")
        status.add_argument("--json", action="store_true", help="machine-readable output")

    add_lifecycle(commands)
    stack = commands.add_parser("stack", help="the services one by one")
    stack_commands = stack.add_subparsers(dest="stack_command", required=True)
    add_lifecycle(stack_commands)
    logs = stack_commands.add_parser("logs", help="print a service's log")
    logs.add_argument("name", choices=ALL)
    logs.add_argument("-n", "--lines", type=int, default=100)

    db = commands.add_parser("db", help="database schema (Alembic)")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="migrate the database to the newest revision")
    db_commands.add_parser("current", help="print the revision the database is at")

    fraud = commands.add_parser("fraud", help="the fraud model")
    fraud_commands = fraud.add_subparsers(dest="fraud_command", required=True)
    fraud_train = fraud_commands.add_parser("train", help="train, save, make current")
    fraud_train.add_argument("--seed", type=int, default=None, help="default: BFC_FRAUD_SEED")
    fraud_train.add_argument("--count", type=int, default=None, help="synthetic rows (20000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 (a return per command)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="bfc: %(message)s", stream=sys.stderr)
    logging.getLogger("bfc").setLevel(logging.INFO)
    settings = get_settings()
    try:
        if args.command == "db":
            return _db(args.db_command, settings)
        if args.command == "fraud":
            return _fraud_train(settings, seed=args.seed, count=args.count)
        command = args.stack_command if args.command == "stack" else args.command
        stack = Stack(settings)
        if command == "logs":
            return _logs(stack, args.name, args.lines)
        if command == "up":
            return _up(stack, tuple(args.services), show_urls=not args.services)
        if command == "down":
            stopped = stack.down(tuple(args.services))
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
            return 0
        return _status(stack, as_json=args.json)
    except StackError as exc:
        print(f"bfc: {exc}", file=sys.stderr)
        return 1


def _up(stack: Stack, names: tuple[str, ...], *, show_urls: bool) -> int:
    report = stack.up(names)
    print(
        f"up in {report.seconds:.1f}s · started: {', '.join(report.started) or 'nothing'}"
        f" · already running: {', '.join(report.already_running) or 'nothing'}"
    )
    if show_urls:
        for label, url in stack.urls().items():
            print(f"  {label:<26} {url}")
        print(f"  {'Dev logins':<26} {DEV_LOGINS}")
    return 0


def _status(stack: Stack, *, as_json: bool) -> int:
    health = stack.status()
    if as_json:
        payload = {
            "healthy": all(h.state == "healthy" for h in health.values()),
            "services": {
                name: {"state": h.state, "detail": h.detail, "pid": stack.pid(name)}
                for name, h in health.items()
            },
        }
        print(json.dumps(payload, indent=2))
    else:
        for name, h in health.items():
            print(f"{name:<9} {h.state:<10} {h.detail}")
    return 0 if all(h.state == "healthy" for h in health.values()) else 3


def _logs(stack: Stack, name: str, lines: int) -> int:
    path = stack.table.log_path(name)
    if not path.exists():
        print(f"bfc: no log for {name} yet ({path})", file=sys.stderr)
        return 1
    with path.open("rb") as log:
        tail = log.readlines()[-lines:]
    sys.stdout.write(b"".join(tail).decode(errors="replace"))
    return 0


def _db(command: str, settings: Settings) -> int:
    from infra.migrations.runner import current_revision, upgrade_to_head

    if command == "upgrade":
        upgrade_to_head(settings)
    print(current_revision(settings) or "(empty database)")
    return 0


def _fraud_train(settings: Settings, *, seed: int | None, count: int | None) -> int:
    import time

    from infra.fraud_model import DEFAULT_COUNT, save, train

    started = time.perf_counter()
    try:
        model = train(
            settings.fraud_seed if seed is None else seed,
            DEFAULT_COUNT if count is None else count,
        )
    except ValueError as exc:
        print(f"bfc: {exc}", file=sys.stderr)
        return 2
    path = save(model, settings.fraud_model_path)
    print(f"{model.version} trained in {time.perf_counter() - started:.1f}s, current in {path}")
    print(json.dumps(model.metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
