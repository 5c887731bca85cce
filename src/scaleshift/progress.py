"""Progress bars for the work a person waits on: training steps, evaluation, feature caching,
`datasets check`, the benchmark loops. One set of options for all of them:

    for images, targets in progress(loader, "evaluate"):
        ...

A bar (tqdm, on stderr) is drawn only in a terminal (tqdm's `disable=None`), only on rank 0
under torchrun, and not when TQDM_DISABLE is set (tqdm's own switch, which tqdm ignores once a
caller passes `disable`). Redirected output (CI logs, files) stays plain text: the
`log_every` step lines and epoch summaries print as before, and `replaces_lines(bar)` says when
a bar in the terminal takes the place of the step lines instead.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable

from tqdm import tqdm


def quiet() -> bool:
    """No bars in this process: not rank 0 of a torchrun job, or TQDM_DISABLE is set."""
    return int(os.environ.get("RANK", "0")) != 0 or \
        os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")


def progress(iterable: Iterable, desc: str, total: int | None = None) -> tqdm:
    """`iterable` wrapped in a bar that disappears when done (the summary lines stay)."""
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                disable=True if quiet() else None)


def replaces_lines(bar: tqdm) -> bool:
    """True when `bar` is drawn in the terminal stdout also prints to, where the plain
    progress lines would repeat it."""
    return not bar.disable and sys.stdout.isatty()


def say(message: str) -> None:
    """print(message) to stdout, flushed, without tearing a bar that is being drawn."""
    with tqdm.external_write_mode(file=sys.stdout):
        print(message, flush=True)
