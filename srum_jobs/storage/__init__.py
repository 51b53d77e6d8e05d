"""Object storage: `file://` (the embedded default) and `s3://` (AWS, MinIO, any S3-compatible store)
behind one small interface (base.py), the lease that keeps two runs of an experiment apart (lease.py) and
PNG encoding (png.py). What lives where in a run is the layout's (srum_jobs/layout.py), not storage's.
"""

from __future__ import annotations

from typing import Any

from .base import (CHECKSUM_SUFFIX, TEMP_SUFFIX, ChecksumMismatch, DamagedData, InvalidKey, LeaseHeld, LeaseLost,
                   NoSpace, NotFound, ObjectStore, StorageError, StorageRefused, StorageUnavailable, normalise_key,
                   os_error, sha256_hex)
from .files import LocalStore
from .lease import LEASE_ENV, Lease
from .png import png_bytes
from .s3 import S3Store

__all__ = ["CHECKSUM_SUFFIX", "TEMP_SUFFIX", "ChecksumMismatch", "DamagedData", "InvalidKey", "LeaseHeld",
           "LeaseLost", "NoSpace", "NotFound", "ObjectStore", "StorageError", "StorageRefused", "StorageUnavailable",
           "normalise_key", "os_error", "sha256_hex", "LocalStore", "LEASE_ENV", "Lease", "png_bytes", "S3Store",
           "open_store"]


def open_store(target: Any, **overrides: Any) -> ObjectStore:
    """A store from a URI string or a `config.StorageConfig`."""
    if isinstance(target, str):
        uri, opts = target, dict(overrides)
    else:
        uri = target.root
        opts = dict(endpoint_url=target.endpoint_url, region=target.region, max_attempts=target.max_attempts,
                    multipart_threshold_mb=target.multipart_threshold_mb, timeout_s=target.timeout_s,
                    probe_timeout_s=target.probe_timeout_s)
        opts.update(overrides)
    if uri.startswith("file://"):
        return LocalStore(uri[len("file://"):])
    if uri.startswith("s3://"):
        return S3Store(uri, **opts)
    raise StorageError(f"unsupported storage URI {uri!r}: use file://PATH or s3://bucket/prefix")
