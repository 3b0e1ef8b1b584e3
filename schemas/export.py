"""Export the canonical event JSON Schema for upstream producers.

    python -m schemas.export          # (re)write schemas/jsonschema/canonical-event.v1.json
    python -m schemas.export --check  # exit 1 when the committed file is stale

The file is generated from `schemas.events.json_schema()`; never edit it by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from schemas.events import json_schema

SCHEMA_PATH = Path(__file__).resolve().parent / "jsonschema" / "canonical-event.v1.json"


def render() -> str:
    """The schema file's exact text: pretty, sorted keys, trailing newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def check(path: Path = SCHEMA_PATH) -> str | None:
    """None when `path` holds the current schema, else why it does not."""
    try:
        on_disk = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{path} is missing; run `make schema` (python -m schemas.export) to create it"
    if on_disk != render():
        return (
            f"{path} is stale: it differs from schemas.events.json_schema(); "
            "run `make schema` (python -m schemas.export) and commit the result"
        )
    return None


def write(path: Path = SCHEMA_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m schemas.export",
        description="Write the canonical event JSON Schema (SPEC §3) for upstream producers.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the file on disk differs from a fresh export",
    )
    parser.add_argument(
        "--path", type=Path, default=SCHEMA_PATH, help=f"output file (default: {SCHEMA_PATH})"
    )
    args = parser.parse_args(argv)
    if args.check:
        problem = check(args.path)
        if problem is not None:
            print(problem, file=sys.stderr)
            return 1
        print(f"{args.path} is up to date")
        return 0
    write(args.path)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
