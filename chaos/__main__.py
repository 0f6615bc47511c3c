"""`python -m chaos`: run N workflows through the real services while injecting faults, check
that nothing was lost, duplicated or invented, and print the figures as one JSON line.
Exit status 0 when every check passed, 1 otherwise."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from chaos.runner import FAULTS, NODE_FAULTS, Config, run
from chaos.workload import Mix

DEFAULT_MIX = Mix()


def parse(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--workflows", type=int, default=300, help="workflows to start")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated subset of {','.join(FAULTS)}",
    )
    parser.add_argument("--subscribers", type=int, default=20, help="SSE streams to follow")
    parser.add_argument("--settle-timeout", type=float, default=240.0)
    parser.add_argument("--step-delay", type=float, default=0.05, help="seconds per step body")
    parser.add_argument(
        "--spare-orchestrator-amqp",
        action="store_true",
        help="never restart the broker nor cut the orchestrator's broker link",
    )
    parser.add_argument(
        "--mapped",
        type=float,
        default=DEFAULT_MIX.mapped,
        help="fraction of the workflows that are mapped (ledgerMap, batchImport); 0: none",
    )
    parser.add_argument(
        "--batch-import",
        type=float,
        default=DEFAULT_MIX.batch_import,
        help="fraction of the mapped workflows that are batchImport (the others: ledgerMap)",
    )
    parser.add_argument(
        "--approval",
        type=float,
        default=DEFAULT_MIX.approval,
        help="fraction of the workflows that are approval (signals, compensation); 0: none",
    )
    parser.add_argument(
        "--items",
        default=f"{DEFAULT_MIX.min_items}-{DEFAULT_MIX.max_items}",
        help="items per mapped workflow, MIN-MAX (or one number)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help=f"on three RabbitMQ nodes, adding {','.join(NODE_FAULTS)} to the faults, and a "
        "PostgreSQL primary with a synchronous standby, failed over once halfway through",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    known = (*FAULTS, *NODE_FAULTS) if args.cluster else FAULTS
    unknown = sorted(set(faults) - set(known))
    if unknown or not faults:
        parser.error(f"unknown faults {unknown}; choose from {', '.join(known)}")
    if args.cluster and args.faults == ",".join(FAULTS):
        faults = (*faults, *NODE_FAULTS)
    low, _, high = str(args.items).partition("-")
    try:
        min_items, max_items = int(low), int(high or low)
    except ValueError:
        parser.error(f"--items takes MIN-MAX, not {args.items!r}")
    if not 1 <= min_items <= max_items:
        parser.error("--items needs 1 <= MIN <= MAX")
    if not (0 <= args.mapped <= 1 and 0 <= args.batch_import <= 1 and 0 <= args.approval <= 1):
        parser.error("--mapped, --batch-import and --approval are fractions in [0, 1]")
    if args.mapped + args.approval > 1:
        parser.error("--mapped and --approval together are at most 1")
    if args.spare_orchestrator_amqp:
        faults = tuple(f for f in faults if f != "restart-broker")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("aiormq", "aio_pika", "httpx"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    return Config(
        workflows=args.workflows,
        duration=args.duration,
        seed=args.seed,
        faults=faults,
        subscribers=args.subscribers,
        settle_timeout=args.settle_timeout,
        step_delay=args.step_delay,
        spare_orchestrator_amqp=args.spare_orchestrator_amqp,
        cluster=args.cluster,
        mix=Mix(
            mapped=args.mapped,
            approval=args.approval,
            batch_import=args.batch_import,
            min_items=min_items,
            max_items=max_items,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse(argv)
    report = asyncio.run(run(config))
    sys.stdout.write(json.dumps(report, sort_keys=False) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
