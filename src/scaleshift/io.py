"""Atomic file writes (a crash never leaves a half-written checkpoint, adapter or result),
safetensors files whose bytes depend only on their content, the one sha256 of a file, and PNG
figures."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ScaleshiftError
from .extras import require


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and replaces `path` in
    one rename. The file gets the permissions the umask gives a new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success its files are fsynced and it takes the place of
    `path` (replacing an existing directory only after the new one is complete)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        mask = _umask()
        os.chmod(tmp, 0o777 & ~mask)
        for child in tmp.iterdir():
            if child.is_file():
                os.chmod(child, 0o666 & ~mask)
                _fsync(child)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def claim_folder(out: Path, marker: str, what: str, written_before=lambda out: False) -> None:
    """`out` as the folder of a command that writes several files: new, empty, or one it wrote
    before (its `marker`, or `written_before(out)` for folders older than the marker), whose
    files are then replaced. A file or a folder of the user's is refused before any write."""
    if out.exists() and not out.is_dir():
        raise ScaleshiftError(f"--out {out} is a file; pass a folder for {what}")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file() \
            and not written_before(out):
        raise ScaleshiftError(f"--out {out} is a non-empty folder scaleshift did not write; it is "
                              f"never written into: pass a new or empty folder (nothing was written)")
    out.mkdir(parents=True, exist_ok=True)
    (out / marker).touch()


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """safetensors' save_file, written atomically and with the header's metadata in sorted key
    order. safetensors keeps the metadata in a hash map whose order changes from one call to the
    next, so the same weights would otherwise give files of different sha256 (and a backbone's
    recorded sha256 could not be reproduced by running its command again)."""
    from safetensors.torch import save
    raw = save(tensors, metadata=metadata)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    if "__metadata__" in header:
        header = {"__metadata__": dict(sorted(header.pop("__metadata__").items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)          # the format pads the header to 8 bytes with spaces
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.write(memoryview(raw)[8 + size:])


def cache_dir(kind: str) -> Path:
    """scaleshift's cache folder for `kind` (converted weights): $SCALESHIFT_CACHE/kind, else
    ~/.cache/scaleshift/kind."""
    root = os.environ.get("SCALESHIFT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "scaleshift"
    blocking = next((p for p in (base / kind, *(base / kind).parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        from .errors import ScaleshiftError
        source = "SCALESHIFT_CACHE" if root else "the cache folder"
        raise ScaleshiftError(f"{source} {base}: {blocking} is a file, not a folder; set "
                              f"SCALESHIFT_CACHE to a folder scaleshift may write to")
    return base / kind


def cached_file_matches(path: Path, metadata: dict) -> bool:
    """Whether `path` is a readable safetensors file whose header metadata holds `metadata`
    (a converted-weights cache entry still valid for its source); damaged or foreign: False."""
    from safetensors import safe_open
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = f.metadata() or {}
    except Exception:            # a damaged or foreign file: rebuild it
        return False
    return all(stored.get(k) == v for k, v in metadata.items())


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def figure(*args, **kwargs):
    """plt.subplots on the non-interactive Agg backend (no screen needed)."""
    require("matplotlib", "plotting").use("Agg")
    plt = require("matplotlib.pyplot", "plotting")
    return plt.subplots(*args, **kwargs)


def save_png(fig, path: str | os.PathLike) -> None:
    plt = require("matplotlib.pyplot", "plotting")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
