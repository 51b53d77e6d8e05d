"""Checkpoints in object storage: complete or invisible.

Each file of a checkpoint is uploaded with its checksum sidecar; `manifest.json` (listing every file and
its sha256) is written last, with its own sidecar. A checkpoint counts only when that manifest sidecar
exists and every listed file verifies, so a crash or a dropped upload mid-checkpoint is never resumed from.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..storage import RunLayout, StorageError

FORMAT = 1


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
    layout.store.put_json(prefix + "manifest.json", manifest, checksum=True)   # last: marks it complete
    return prefix


def latest_checkpoint(layout: RunLayout) -> Optional[int]:
    steps = layout.completed_checkpoints()
    return steps[-1] if steps else None


def load_checkpoint(layout: RunLayout, step: int, parts: Optional[list] = None) -> Dict[str, Any]:
    """Verify and load a complete checkpoint (all parts, or the named ones)."""
    prefix = layout.checkpoint_prefix(step)
    manifest = layout.store.get_json(prefix + "manifest.json", verify=True)
    out: Dict[str, Any] = {"manifest": manifest}
    for fname, digest in manifest["files"].items():
        name = fname[:-3]
        if parts is not None and name not in parts:
            continue
        data = layout.store.get_bytes(prefix + fname, verify=True)
        from ..storage import sha256_hex

        if sha256_hex(data) != digest:
            raise StorageError(f"{layout.store.uri_for(prefix + fname)} does not match its manifest")
        out[name] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return out
