"""Paths read from a dataset's list and json files stay inside the dataset's folder: a line
`../../../../etc/passwd 3`, an absolute path or a link leading out of the folder is refused
with its file and line, never opened or trained on."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ScaleshiftError


def inside(root: Path, relative: str, where: str, base: Path | None = None) -> Path:
    """base / relative (base: root by default, or the image folder in it), refused unless it
    resolves (links followed) inside root."""
    path = Path(base or root) / relative
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise ScaleshiftError(f"{where}: {relative!r} leads outside the dataset folder {root} "
                              f"(to {real}); list image paths relative to it, inside it")
    return path


def line_numbers(path: Path) -> list[int]:
    """The numbers of the non-blank lines of a list file (the rows base.read_table returns)."""
    return [n for n, line in enumerate(Path(path).read_text().splitlines(), 1) if line.strip()]
