"""Checkpoints in object storage: complete or invisible, and damage falls back instead of stopping.

Each file of a checkpoint is uploaded with its checksum sidecar; `manifest.json` (listing every file and
its sha256) is written last, with its own sidecar, and only after the run's lease is confirmed (a writer
whose run was taken over never commits). A checkpoint counts only when that manifest sidecar exists and
every listed file verifies, so a crash or a dropped upload mid-checkpoint is never resumed from; a
checkpoint found damaged when resuming is moved to quarantine and the previous one is used. Only the
newest `training.keep_checkpoints` complete checkpoints are kept.
"""

from __future__ import annotations

import io
import pickle
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..storage import ChecksumMismatch, NotFound, RunLayout, sha256_hex

FORMAT = 1
MANIFEST = "manifest.json"


class CorruptCheckpoint(ChecksumMismatch):
    """A checkpoint file that verifies against nothing, or that cannot be loaded as plain tensors."""


def save_part(layout: RunLayout, step: int, name: str, obj: Any, scratch: Optional[Path] = None) -> str:
    """Upload one part of a checkpoint (any rank may, e.g. its optimizer shard); returns its sha256.
    Invisible until a manifest that lists it is written."""
    prefix = layout.checkpoint_prefix(step)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    if scratch is not None and len(data) > (64 << 20):   # big: stream from disk, multipart on S3
        path = Path(scratch) / f"{name}.pt"
        path.write_bytes(data)
        digest = layout.store.put_file(prefix + f"{name}.pt", path)
        path.unlink()
        return digest
    return layout.store.put_bytes(prefix + f"{name}.pt", data, checksum=True)


def save_checkpoint(layout: RunLayout, step: int, parts: Dict[str, Any], meta: Optional[Dict[str, Any]] = None,
                    scratch: Optional[Path] = None, uploaded: Optional[Dict[str, str]] = None) -> str:
    """Upload `parts` (name -> torch-serialisable object) as one checkpoint, listing also parts other ranks
    `uploaded` already (name -> sha256); returns its prefix."""
    prefix = layout.checkpoint_prefix(step)
    files = {f"{name}.pt": digest for name, digest in (uploaded or {}).items()}
    for name, obj in parts.items():
        files[f"{name}.pt"] = save_part(layout, step, name, obj, scratch)
    manifest = {"format": FORMAT, "step": step, "files": files, "saved_at": time.time(), **(meta or {})}
    layout.check_commit()
    layout.store.put_json(prefix + MANIFEST, manifest, checksum=True)   # last: marks it complete
    return prefix


def latest_checkpoint(layout: RunLayout) -> Optional[int]:
    steps = layout.completed_checkpoints()
    return steps[-1] if steps else None


def load_checkpoint(layout: RunLayout, step: int, parts: Optional[list] = None) -> Dict[str, Any]:
    """Verify and load a complete checkpoint (all parts, or the named ones)."""
    prefix = layout.checkpoint_prefix(step)
    manifest = layout.store.get_json(prefix + MANIFEST, verify=True)
    out: Dict[str, Any] = {"manifest": manifest}
    for fname, digest in manifest["files"].items():
        name = fname[:-3]
        if parts is not None and name not in parts:
            continue
        key = prefix + fname
        data = layout.store.get_bytes(key, verify=True)
        if sha256_hex(data) != digest:
            raise CorruptCheckpoint(f"{layout.store.uri_for(key)} does not match its manifest")
        try:
            out[name] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
            # weights_only: anything but tensors and plain containers is refused, never executed
            raise CorruptCheckpoint(f"{layout.store.uri_for(key)} cannot be loaded as tensors: "
                                    f"{' '.join(str(e).split())[:200]}") from None
    return out


def quarantine_checkpoint(layout: RunLayout, step: int, why: str) -> str:
    """Move every file of a checkpoint aside (manifest first, so it stops counting at once)."""
    prefix = layout.checkpoint_prefix(step)
    keys = layout.store.list(prefix)
    keys.sort(key=lambda k: k.rsplit("/", 1)[-1] != MANIFEST)
    moved = [layout.quarantine(k, why) for k in keys]
    return moved[0].rsplit("/", 1)[0] + "/" if moved else prefix


def load_newest_good(layout: RunLayout, parts: Optional[list], say: Callable[[str], None]) -> Tuple[Optional[int], Dict[str, Any]]:
    """(step, state) of the newest complete checkpoint that loads; each newer one that does not (checksum,
    missing part, not plain tensors) is quarantined, saying so. (None, {}) when none is left."""
    for step in reversed(layout.completed_checkpoints()):
        try:
            return step, load_checkpoint(layout, step, parts)
        except (ChecksumMismatch, NotFound) as e:
            where = quarantine_checkpoint(layout, step, f"damaged: {e}")
            say(f"train: checkpoint step {step} is damaged ({e}); moved to {where}; falling back to the one before")
    return None, {}


def prune_checkpoints(layout: RunLayout, keep: Optional[int]) -> List[int]:
    """Delete complete checkpoints beyond the newest `keep` (manifest first: it stops counting before any
    file goes), and incomplete leftovers older than the newest complete one. Returns the deleted steps."""
    if keep is None:
        return []
    complete = layout.completed_checkpoints()
    newest = complete[-1] if complete else None
    doomed = complete[:-keep] if len(complete) > keep else []
    if newest is not None:     # a crash mid-checkpoint leaves files without a committed manifest
        seen = {int(k.split("/")[-2][len("step-"):]) for k in layout.store.list(layout.key("checkpoints") + "/")
                if k.split("/")[-2].startswith("step-")}
        doomed += [s for s in seen if s < newest and s not in complete]
    for step in sorted(set(doomed)):
        prefix = layout.checkpoint_prefix(step)
        keys = layout.store.list(prefix)
        keys.sort(key=lambda k: k.rsplit("/", 1)[-1] != MANIFEST)
        for k in keys:
            layout.store.delete(k)
    return sorted(set(doomed))
