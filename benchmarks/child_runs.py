"""The fresh-process loop the step-time benchmarks share (fresh_runs.py, step_gap.py): each job
runs as its own Python process, and its record (the child's last stdout line, JSON) is written
to OUT/runs/NAME.json as it finishes, so an interrupted benchmark resumes where it stopped."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_children(script: str, out: Path, jobs: list[tuple[str, list[str]]], command: str,
                 tables_only: bool, render, **summary) -> str:
    """Run the `jobs` (record name, the child's arguments; a job with a record already is not
    run again), record the command, machine and `summary` in OUT/results.json, and write
    OUT/results.md: render(records in job order, command, machine), which is returned.
    tables_only: nothing runs, the committed files are read."""
    from scaleshift.io import write_json, write_text
    from scaleshift.runs import machine_info
    runs = out / "runs"
    if not tables_only:
        runs.mkdir(parents=True, exist_ok=True)
        for name, args in jobs:
            path = runs / f"{name}.json"
            if path.is_file():
                continue
            child = subprocess.run([sys.executable, script, *args], check=True, capture_output=True,
                                   text=True)
            write_json(path, json.loads(child.stdout.strip().splitlines()[-1]))
            print(f"{name}: done", flush=True)
        write_json(out / "results.json", dict(command=command, machine=machine_info(), **summary))
    records = [json.loads((runs / f"{name}.json").read_text()) for name, _ in jobs
               if (runs / f"{name}.json").is_file()]
    recorded = json.loads((out / "results.json").read_text())
    text = render(records, recorded["command"], recorded["machine"])
    write_text(out / "results.md", text)
    return text
