"""`reftrack`: the command line (SPEC §8)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from streams.config import ConfigError, Settings, Topics, load_settings


def _settings() -> Settings:
    return load_settings()


def cmd_broker(args: argparse.Namespace) -> int:
    import signal
    import time

    from streams.broker import EmbeddedBroker

    broker = EmbeddedBroker(args.port, args.host).start()
    print(
        f"embedded broker (Tansu, memory only) listening on {broker.bootstrap}; Ctrl-C stops it",
        flush=True,
    )
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop and broker.process and broker.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    return run_worker(_settings())


def cmd_migrate(args: argparse.Namespace) -> int:
    from sinks.migrate import migrate

    settings = _settings()
    ch = settings.clickhouse()
    try:
        applied = migrate(ch)
    finally:
        ch.close_blocking()
    for m in applied:
        print(f"applied {m.version:04d}_{m.name}")
    print(f"{ch.describe()} database {settings.clickhouse_database}: up to date")
    return 0


def cmd_access_sql(args: argparse.Namespace) -> int:
    from sinks.access import access_statements

    settings = _settings()
    try:
        statements = access_statements(
            settings.clickhouse_database, args.org, settings.cluster_layout
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(
        f"-- reftrack read-only BI roles for database {settings.clickhouse_database}; "
        "run as a user allowed to manage access (sinks/access.py, docs/security.md)"
    )
    for statement in statements:
        print(statement + ";")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from streams.query import query_worker
    from streams.replay import ReplayError, replay

    settings = _settings()
    if not args.yes:
        raise ReplayError(
            "replay empties reftrack's ClickHouse tables and re-sinks them from Kafka when "
            "the worker next starts; stop the workers, then run `reftrack replay --yes`"
        )
    try:
        running = query_worker(settings, "SELECT 1", timeout=5) is not None
    except Exception:
        running = True
    if running:
        raise ReplayError(f"a worker answers on port {settings.web_port}: stop it first")
    for line in replay(settings):
        print(line)
    print("start the worker to rebuild ClickHouse from the topics")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from streams.query import format_rows, run_query

    columns, rows = run_query(_settings(), args.sql, args.max_rows)
    print(format_rows(columns, rows, args.format))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from streams.report import FORMATS, ReportError, write_report

    output = Path(args.output)
    fmt = args.format or (output.suffix.lstrip(".").lower() if output.suffix else "html")
    if fmt not in FORMATS:
        print(f"reftrack: give --format {'|'.join(FORMATS)} (not .{fmt})", file=sys.stderr)
        return 2
    try:
        data = write_report(_settings(), args.date_from, args.date_to, args.org, fmt, output)
    except ReportError as exc:
        print(f"reftrack: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {fmt} report for {data.period.start} to {data.period.end} "
        f"({data.kpis['referrals']['value']} referrals, {data.scope}) to {output}"
    )
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from streams.produce import produce_file

    settings = _settings()
    names = Topics(settings.topic_prefix)
    topic = args.topic or (names.events if args.source == "canonical" else names.raw[args.source])
    framing = "hl7v2" if args.source == "hl7v2" else "lines"
    sent = asyncio.run(
        produce_file(
            Path(args.file),
            settings.kafka_bootstrap,
            topic,
            framing=framing,
            kafka_options=settings.kafka_options(),
        )
    )
    print(f"sent {sent} messages to {topic}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from streams import simulator

    settings = _settings()
    config = simulator.SimConfig(seed=args.seed, orgs=tuple(args.orgs.split(",")))
    if args.output:
        from datetime import UTC, datetime, timedelta

        now = datetime.now(UTC)
        config = simulator.SimConfig(
            seed=args.seed,
            orgs=tuple(args.orgs.split(",")),
            referrals=args.referrals,
            start=now - timedelta(days=args.days),
            span=timedelta(days=args.days),
        )
        messages = simulator.generate(config, now)
        written = simulator.write_ndjson(messages, Path(args.output))
        print(f"wrote {written} messages to {args.output}")
        return 0
    names = Topics(settings.topic_prefix)
    counts = asyncio.run(
        simulator.run(
            config,
            settings.kafka_bootstrap,
            names.events,
            args.rate,
            args.duration,
            raw_topics=names.raw,
            raw_share=args.raw_share,
            kafka_options=settings.kafka_options(),
        )
    )
    print(f"simulator done: {counts}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(rate=args.rate, port=args.port, seed=args.seed, raw_share=args.raw_share)


RAW_SHARE_HELP = (
    "share of valid events sent as FHIR / HL7 v2 / webhook / claims messages on the raw "
    "topics (HL7 v2 senders are the org ids: list them in REFTRACK_SOURCES_FILE)"
)


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("a share between 0 and 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reftrack",
        description="Real-time referral tracking: Kafka events in, referral status and KPIs "
        "in ClickHouse out. Configuration comes from REFTRACK_* environment variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo", help="embedded broker + worker + simulator + dashboard, until Ctrl-C"
    )
    p.add_argument("--rate", type=float, default=100.0, help="simulated messages per second")
    p.add_argument("--port", type=int, default=None, help="broker port (default: a free one)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--raw-share", type=_share, default=0.3, help=RAW_SHARE_HELP)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("worker", help="run a pipeline worker")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu)")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("simulate", help="synthetic traffic from several health systems")
    p.add_argument("--rate", type=float, default=100.0, help="messages per second")
    p.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--orgs", default="northwind,lakeside,summit")
    p.add_argument("--output", help="write NDJSON to this file instead of sending to Kafka")
    p.add_argument("--referrals", type=int, default=1000, help="with --output: referrals")
    p.add_argument("--days", type=float, default=30.0, help="with --output: days of history")
    p.add_argument("--raw-share", type=_share, default=0.0, help=RAW_SHARE_HELP)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("produce", help="send a file of events (NDJSON) or HL7 v2 messages to Kafka")
    p.add_argument("file")
    p.add_argument(
        "--source",
        choices=("canonical", "fhir", "hl7v2", "comms", "claims"),
        default="canonical",
        help="what the file holds: NDJSON, one message per line, except hl7v2 (a message "
        "starts at each MSH line); picks the topic (default: canonical events)",
    )
    p.add_argument("--topic", help="default: the --source's topic, e.g. <prefix>.events.v1")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("query", help="read-only SQL against reftrack's ClickHouse")
    p.add_argument("sql")
    p.add_argument("--format", choices=("table", "json", "tsv"), default="table")
    p.add_argument("--max-rows", type=int, default=10_000, help="refuse larger results")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser(
        "report",
        help="a shareable referral-program review of a period (HTML, CSV or PDF)",
        description="KPIs against the previous period, weekly trends, the stage funnel, time "
        "per stage and leakage by specialty (docs/dashboard.md). Reads through a running "
        "worker, or ClickHouse directly when none answers.",
    )
    p.add_argument("--from", dest="date_from", required=True, help="first day, YYYY-MM-DD (UTC)")
    p.add_argument("--to", dest="date_to", required=True, help="last day, YYYY-MM-DD (inclusive)")
    p.add_argument("--org", action="append", default=[], help="an org id (repeat; default: all)")
    p.add_argument(
        "--format", choices=("html", "csv", "pdf"), help="default: from --output's suffix"
    )
    p.add_argument("--output", required=True, help="file to write")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("replay", help="rebuild ClickHouse from the topics (workers stopped)")
    p.add_argument("--yes", action="store_true", help="really empty the tables and rewind")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("migrate", help="apply ClickHouse migrations")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "access-sql", help="print the SQL of the read-only BI roles and per-org row policies"
    )
    p.add_argument("--org", action="append", default=[], help="an org id (repeat)")
    p.set_defaults(func=cmd_access_sql)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"reftrack: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from sinks.clickhouse import scrub

        name = type(exc).__name__
        if name in ("QueryError", "BrokerError", "TopicError", "ClickHouseError", "ReplayError"):
            print(f"reftrack: {scrub(str(exc))}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
