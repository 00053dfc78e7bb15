"""A resume under other package versions than the run recorded: say which packages differ.

Every trial row records the driver's package versions (records.provenance, column `versions`). A resumed
sweep whose environment differs would mix trials trained under two sets of versions in one table. The
sweep warns, naming each package, and goes on (it does not refuse): the rows keep their own versions, so
the mix stays visible, and a cluster whose image was rebuilt can still finish its run. The fix is to
reinstall from the lock (`make install`, pinned by requirements/lock.txt). docs/reproducibility.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable

from benchmark.results import records
from benchmark.results.run_dir import RunDir


def recorded_versions(rows: Iterable[dict[str, Any]]) -> dict[str, str]:
    """The versions of the last finished trial that recorded them ({} when none did)."""
    latest = None
    for r in rows:
        if r.get("versions") and (latest is None or str(r.get("finished_at") or "") >= str(latest.get("finished_at") or "")):
            latest = r
    try:
        return json.loads(latest["versions"]) if latest else {}
    except ValueError:
        return {}


def drift(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """'package recorded -> installed' for every package whose version differs (missing: '(none)')."""
    return [f"{p} {recorded.get(p, '(none)')} -> {current.get(p, '(none)')}"
            for p in sorted(set(recorded) | set(current)) if recorded.get(p) != current.get(p)]


def warn_on_drift(run_dir: str | Path, current: dict[str, str] | None = None) -> list[str]:
    """Print one warning line when this environment's versions differ from the run's; returns the differences."""
    recorded = recorded_versions(RunDir(run_dir).all_rows())
    if not recorded:
        return []
    if current is None:
        current = json.loads(records.provenance()["versions"])
    changes = drift(recorded, current)
    if changes:
        print(f"tunevlseg run: warning: resuming {run_dir} with other package versions than its trials recorded: "
              f"{'; '.join(changes)}. Its tables would mix trials of both; `make install` reinstalls the "
              "lock's versions (requirements/lock.txt)", file=sys.stderr)
    return changes
