"""Local table state (RocksDB) and unclean shutdowns.

After a SIGKILL or a crash, the RocksDB files hold every table write the worker made,
including writes whose changelog messages were lost. On start, Faust replays the
changelog over those files, so some keys go back to their last durable value while
others keep a newer local one. Each referral's state stays correct on its own. The rate
windows, though, depend on their cells and their partition's progress record agreeing
(schemas/windows.py), and a mix of old and new values breaks that.

So a worker that did not stop cleanly discards its local tables and recovers them from
the changelogs alone, which are consistent, ordered prefixes of what was written. A
clean stop leaves a marker, and then the next start reuses the files and skips the
recovery.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "clean-shutdown"


def tables_dir(state_dir: Path) -> Path:
    return state_dir / "v1" / "tables"


def prepare(state_dir: Path) -> bool:
    """Discard local tables unless the last run stopped cleanly; return True if it did."""
    marker = state_dir / MARKER
    tables = tables_dir(state_dir)
    discarded = False
    if tables.exists() and any(tables.iterdir()) and not marker.exists():
        log.warning(
            "the last run did not stop cleanly: discarding local table state in %s; "
            "tables will be recovered from their changelog topics",
            tables,
        )
        shutil.rmtree(tables)
        discarded = True
    marker.unlink(missing_ok=True)
    return discarded


def mark_clean(state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / MARKER).write_text("the worker stopped cleanly; local tables are consistent\n")
