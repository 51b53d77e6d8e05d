"""The store interface and its errors: what every back end (files.py: `file://`, s3.py: `s3://`) provides.

Why a sidecar checksum (`<key>.sha256`) and not only the store's ETag: the sidecar is written *after*
the object, so its presence means "this object is complete", on both back ends, and a reader of a
checkpoint or reward map can refuse a half-written or corrupted object instead of training on it.

Errors say what kind of trouble it is, because that decides whether retrying can help (entry.classify
maps each kind to an exit code): `StorageUnavailable` (the endpoint does not answer: retry),
`StorageRefused` (permission, read-only, not a folder, credentials, no such bucket: fix the settings),
`NoSpace` (disk or quota full), `InvalidKey` (a key that would escape the root), `DamagedData` and its
`ChecksumMismatch` (corrupt data), `NotFound`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Union

from .png import png_bytes

CHECKSUM_SUFFIX = ".sha256"
TEMP_SUFFIX = ".tmp"                    # LocalStore's in-flight writes: `.<name>.<random>.tmp`


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI."""


class NotFound(StorageError):
    """The object does not exist."""


class DamagedData(StorageError):
    """An object whose bytes cannot be what was written: bad checksum, not UTF-8, not JSON, not an image."""


class ChecksumMismatch(DamagedData):
    """The object's bytes do not match its recorded checksum (corrupt or half-written)."""


class InvalidKey(StorageError, ValueError):
    """A key that would escape the store's prefix or is otherwise malformed."""


class StorageUnavailable(StorageError):
    """The store does not answer (silent or unreachable endpoint, 5xx past the retries): retrying may help."""


class StorageRefused(StorageError):
    """The store refuses the operation for good: permission, read-only, not a folder, credentials, bucket."""


class NoSpace(StorageError):
    """The disk or quota is full."""


class LeaseHeld(StorageError):
    """Another run holds the experiment's lease."""


class LeaseLost(StorageError):
    """This run's lease was taken over (it stopped renewing it): its writers must not commit anything."""


def os_error(e: OSError, verb: str, where: str) -> StorageError:
    """An OSError of a file:// operation as the storage error that says what to do about it."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"cannot {verb} {where}: no space left on the device (disk or quota full); free space and "
                       "rerun: the run resumes where it stopped")
    if e.errno in (errno.EACCES, errno.EPERM):
        return StorageRefused(f"cannot {verb} {where}: permission denied")
    if e.errno == errno.EROFS:
        return StorageRefused(f"cannot {verb} {where}: read-only file system")
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return StorageRefused(f"cannot {verb} {where}: a part of the path is a file, not a folder")
    return StorageError(f"cannot {verb} {where}: {e.strerror or e}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalise_key(key: str) -> str:
    """Reject keys that could escape the experiment's prefix or alias another key."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"storage key must be a non-empty string, got {key!r}")
    if "\x00" in key or "\\" in key:
        raise InvalidKey(f"storage key {key!r} contains a NUL or backslash")
    if key.startswith("/"):
        raise InvalidKey(f"storage key {key!r} is absolute; keys are relative to the storage root")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidKey(f"storage key {key!r} has an empty, '.' or '..' segment")
    return key


def _json_default(o: Any) -> Any:
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


class ObjectStore:
    """Common operations; subclasses provide the raw byte-level primitives."""

    uri: str

    # --- primitives (per back end) ---------------------------------------------------------------
    def _put(self, key: str, data: bytes) -> None: raise NotImplementedError
    def _get(self, key: str) -> bytes: raise NotImplementedError
    def _exists(self, key: str) -> bool: raise NotImplementedError
    def _list(self, prefix: str) -> Iterator[str]: raise NotImplementedError
    def _delete(self, key: str) -> None: raise NotImplementedError
    def _create_exclusive(self, key: str, data: bytes) -> bool: raise NotImplementedError
    def _upload_file(self, key: str, path: Path) -> None: self._put(key, path.read_bytes())
    def _download_file(self, key: str, path: Path) -> None: path.write_bytes(self._get(key))
    def _move(self, src: str, dst: str) -> None:
        self._put(dst, self._get(src))
        self._delete(src)

    def probe(self) -> None:
        """Fail now, with a message naming the store, if it cannot be used (called once at start)."""

    # --- public API ------------------------------------------------------------------------------
    def uri_for(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    def put_bytes(self, key: str, data: bytes, *, checksum: bool = False) -> str:
        """Write an object (atomically on file://); with checksum=True also its sidecar. Returns sha256."""
        key = normalise_key(key)
        digest = sha256_hex(data)
        self._put(key, data)
        if checksum:
            self._put(key + CHECKSUM_SUFFIX, digest.encode())
        return digest

    def get_bytes(self, key: str, *, verify: bool = False) -> bytes:
        key = normalise_key(key)
        data = self._get(key)
        if verify:
            self._verify(key, data)
        return data

    def _verify(self, key: str, data: bytes) -> None:
        try:
            expected = self._get(key + CHECKSUM_SUFFIX).decode().strip()
        except NotFound:
            raise ChecksumMismatch(f"{self.uri_for(key)} has no checksum sidecar: it was not completely written") from None
        actual = sha256_hex(data)
        if actual != expected:
            raise ChecksumMismatch(f"{self.uri_for(key)} is corrupt: sha256 {actual[:12]}... != recorded {expected[:12]}...")

    def is_complete(self, key: str) -> bool:
        """True when the object and its checksum sidecar both exist (the sidecar is written last)."""
        key = normalise_key(key)
        return self._exists(key + CHECKSUM_SUFFIX) and self._exists(key)

    def exists(self, key: str) -> bool:
        return self._exists(normalise_key(key))

    def list(self, prefix: str = "") -> List[str]:
        """Keys under a prefix ("dir/" lists a folder), sorted, checksum sidecars excluded."""
        if prefix:
            normalise_key(prefix.rstrip("/"))
        return sorted(k for k in self._list(prefix) if not k.endswith(CHECKSUM_SUFFIX))

    def delete(self, key: str) -> None:
        key = normalise_key(key)
        self._delete(key)
        if self._exists(key + CHECKSUM_SUFFIX):
            self._delete(key + CHECKSUM_SUFFIX)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create only if absent (leases, locks). True if this call created it."""
        return self._create_exclusive(normalise_key(key), data)

    def move(self, src: str, dst: str) -> None:
        """Move an object (and its checksum sidecar) to another key: how damaged data is set aside."""
        src, dst = normalise_key(src), normalise_key(dst)
        self._move(src, dst)
        if self._exists(src + CHECKSUM_SUFFIX):
            self._move(src + CHECKSUM_SUFFIX, dst + CHECKSUM_SUFFIX)

    # text / JSON / JSONL
    def put_text(self, key: str, text: str, *, checksum: bool = False) -> str:
        return self.put_bytes(key, text.encode("utf-8"), checksum=checksum)

    def get_text(self, key: str, *, verify: bool = False) -> str:
        data = self.get_bytes(key, verify=verify)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DamagedData(f"{self.uri_for(key)} is not UTF-8 text (byte {e.start})") from None

    def put_json(self, key: str, obj: Any, *, checksum: bool = False) -> str:
        return self.put_text(key, json.dumps(obj, indent=1, default=_json_default, allow_nan=False), checksum=checksum)

    def get_json(self, key: str, *, verify: bool = False) -> Any:
        text = self.get_text(key, verify=verify)
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise DamagedData(f"{self.uri_for(key)} is not valid JSON: {e}") from None

    def put_jsonl(self, key: str, rows: Iterable[Any], *, checksum: bool = False) -> str:
        lines = []
        for row in rows:
            if hasattr(row, "to_json_line"):
                lines.append(row.to_json_line())
            else:
                lines.append(json.dumps(row, ensure_ascii=False, default=_json_default, allow_nan=False))
        return self.put_text(key, "".join(line + "\n" for line in lines), checksum=checksum)

    # arrays and images
    def put_npy(self, key: str, array: Any, *, checksum: bool = True) -> str:
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.asarray(array), allow_pickle=False)
        return self.put_bytes(key, buf.getvalue(), checksum=checksum)

    def get_npy(self, key: str, *, verify: bool = True) -> Any:
        import numpy as np

        data = self.get_bytes(key, verify=verify)
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as e:
            raise DamagedData(f"{self.uri_for(key)} is not a NumPy array: {e}") from None

    def put_png(self, key: str, image: Any, *, checksum: bool = False) -> str:
        return self.put_bytes(key, png_bytes(image), checksum=checksum)

    def get_png(self, key: str, *, verify: bool = False) -> Any:
        from PIL import Image, UnidentifiedImageError

        data = self.get_bytes(key, verify=verify)
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
            raise DamagedData(f"{self.uri_for(key)} is not a readable image: {e}") from None
        return img

    # large files (checkpoints): multipart on S3
    def put_file(self, key: str, path: Union[str, Path], *, checksum: bool = True) -> str:
        key = normalise_key(key)
        path = Path(path)
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        self._upload_file(key, path)
        if checksum:
            self._put(key + CHECKSUM_SUFFIX, h.hexdigest().encode())
        return h.hexdigest()

    def get_file(self, key: str, path: Union[str, Path], *, verify: bool = True) -> Path:
        key = normalise_key(key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._download_file(key, path)
        if verify:
            self._verify(key, path.read_bytes())
        return path
