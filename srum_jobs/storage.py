"""Object storage: `file://` (the embedded default) and `s3://` (AWS, MinIO, any S3-compatible store)
behind one small interface, plus the run layout every stage agrees on.

Why a sidecar checksum (`<key>.sha256`) and not only the store's ETag: the sidecar is written *after*
the object, so its presence means "this object is complete", on both back ends, and a reader of a
checkpoint or reward map can refuse a half-written or corrupted object instead of training on it.

Errors say what kind of trouble it is, because that decides whether retrying can help (entry.classify
maps each kind to an exit code): `StorageUnavailable` (the endpoint does not answer: retry),
`StorageRefused` (permission, read-only, not a folder, credentials, no such bucket: fix the settings),
`NoSpace` (disk or quota full), `InvalidKey` (a key that would escape the root), `DamagedData` and its
`ChecksumMismatch` (corrupt data), `NotFound`.

The lease (one object naming the run that owns an experiment) lives here too: every writer of a run can
check it before committing a marker or a checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Union

CHECKSUM_SUFFIX = ".sha256"
TEMP_SUFFIX = ".tmp"                    # LocalStore's in-flight writes: `.<name>.<random>.tmp`


def png_bytes(image: Any) -> bytes:
    """A PIL image encoded as PNG: how every image travels to storage and to the judge."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()

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


class LocalStore(ObjectStore):
    """file:// store. Writes go to a temp file in the same folder, then os.replace: never half-visible;
    a write that fails removes its temp file."""

    def __init__(self, root: Union[str, Path]):
        if ".." in Path(root).parts:
            raise InvalidKey(f"storage root file://{root} contains '..'; write the path without it")
        self.root = Path(root).expanduser().resolve()
        self.uri = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root != p and self.root not in p.parents:  # a symlink inside the root pointing out
            raise InvalidKey(f"storage key {key!r} resolves outside {self.uri}")
        return p

    def _temp(self, p: Path, key: str) -> str:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=TEMP_SUFFIX)
        except OSError as e:
            raise os_error(e, "write", self.uri_for(key)) from None
        os.close(fd)
        return tmp

    def _write_atomic(self, key: str, fill: Callable[[str], None]) -> None:
        """fill(temp path) next to the object, then rename it into place; on any failure the temp file goes."""
        p = self._path(key)
        tmp = self._temp(p, key)
        try:
            fill(tmp)
            os.replace(tmp, p)
        except OSError as e:
            _unlink_quietly(tmp)
            raise os_error(e, "write", self.uri_for(key)) from None
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def _put(self, key: str, data: bytes) -> None:
        def fill(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

        self._write_atomic(key, fill)

    def _get(self, key: str) -> bytes:
        p = self._path(key)
        try:
            return p.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"not found: {self.uri_for(key)}") from None
        except IsADirectoryError:
            raise NotFound(f"not found (a folder, not an object): {self.uri_for(key)}") from None
        except OSError as e:
            raise os_error(e, "read", self.uri_for(key)) from None

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _list(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                    continue  # an in-flight atomic write
                rel = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                if rel.startswith(prefix):
                    yield rel

    def _delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise os_error(e, "delete", self.uri_for(key)) from None

    def _create_exclusive(self, key: str, data: bytes) -> bool:
        p = self._path(key)
        tmp = self._temp(p, key)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.link(tmp, p)  # atomic and fails if p exists: the lock primitive
            return True
        except FileExistsError:
            return False
        except OSError as e:
            raise os_error(e, "create", self.uri_for(key)) from None
        finally:
            _unlink_quietly(tmp)

    def _move(self, src: str, dst: str) -> None:
        s, d = self._path(src), self._path(dst)
        try:
            d.parent.mkdir(parents=True, exist_ok=True)
            os.replace(s, d)
        except FileNotFoundError:
            raise NotFound(f"not found: {self.uri_for(src)}") from None
        except OSError as e:
            raise os_error(e, "move", self.uri_for(src)) from None

    def _upload_file(self, key: str, path: Path) -> None:
        self._put(key, path.read_bytes()) if path.stat().st_size < (64 << 20) else self._copy_large(key, path)

    def _copy_large(self, key: str, path: Path) -> None:
        import shutil

        self._write_atomic(key, lambda tmp: shutil.copyfile(path, tmp))

    def probe(self) -> None:
        """The root must be a folder this process can create and write in."""
        if self.root.exists() and not self.root.is_dir():
            raise StorageRefused(f"storage root {self.uri} is a file, not a folder")
        name = f".srum-probe-{socket.gethostname()}-{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(e, "create the storage root", self.uri) from None
        self._put(name, b"probe")
        self._delete(name)

    def sweep_temp(self, prefix: str) -> int:
        """Remove temp files of writes that never finished under `prefix` (a killed writer's leftovers).
        Only safe while no writer of that prefix is alive: the caller holds the experiment's lease."""
        base = self.root / normalise_key(prefix.rstrip("/"))
        removed = 0
        if base.is_dir():
            for dirpath, _dirs, files in os.walk(base):
                for name in files:
                    if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                        _unlink_quietly(os.path.join(dirpath, name))
                        removed += 1
        return removed


def _unlink_quietly(path: Union[str, Path]) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class S3Store(ObjectStore):
    """s3:// store through boto3. Retries: botocore's standard mode (throttling, 5xx, dropped connections)."""

    def __init__(self, uri: str, *, endpoint_url: Optional[str] = None, region: Optional[str] = None,
                 max_attempts: int = 5, multipart_threshold_mb: int = 64, timeout_s: float = 30.0,
                 probe_timeout_s: float = 10.0):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        rest = uri[len("s3://"):]
        self.bucket, _, prefix = rest.partition("/")
        if not self.bucket:
            raise StorageError(f"{uri}: an s3:// URI needs a bucket")
        self.prefix = prefix.strip("/")
        if self.prefix:
            normalise_key(self.prefix)
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        # Credentials: the standard chain only (environment, mounted profile, pod identity), never the file.
        # Every request waits at most timeout_s to connect and timeout_s for each reply, so one call is
        # bounded by max_attempts x timeout_s (+ backoff) even against an endpoint that never answers.
        self.session = boto3.session.Session()
        self.region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.endpoint_url = endpoint_url
        self.timeout_s, self.probe_timeout_s = timeout_s, probe_timeout_s
        self.client = self.session.client(
            "s3", endpoint_url=endpoint_url, region_name=self.region,
            config=Config(retries={"total_max_attempts": max_attempts, "mode": "standard"},
                          connect_timeout=timeout_s, read_timeout=timeout_s))
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold_mb << 20,
                                       multipart_chunksize=max(8, multipart_threshold_mb // 4) << 20)
        self.max_attempts = max_attempts
        import logging

        for name in ("botocore.auth", "botocore.endpoint"):   # DEBUG records carry the session token
            lg = logging.getLogger(name)
            lg.setLevel(max(lg.level, logging.INFO))

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @property
    def endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def _error(self, e: Exception, key: str, verb: str) -> StorageError:
        from botocore.exceptions import (ClientError, ConnectionError as BotoConnectionError, HTTPClientError,
                                         NoCredentialsError, PartialCredentialsError, ReadTimeoutError)

        where = self.uri_for(key)
        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return StorageRefused(f"cannot {verb} {where}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                                  "or mount a Secret / pod identity)")
        if isinstance(e, ReadTimeoutError):
            return StorageUnavailable(f"cannot {verb} {where}: S3 endpoint {self.endpoint} does not answer (no reply "
                                      f"within {self.timeout_s:g} s, {self.max_attempts} attempt(s))")
        if isinstance(e, (BotoConnectionError, HTTPClientError)):
            return StorageUnavailable(f"cannot {verb} {where}: S3 endpoint {self.endpoint} is unreachable "
                                      f"({' '.join(str(e).split())})")
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFound(f"not found: {where}")
            if code == "NoSuchBucket":
                return StorageRefused(f"cannot {verb} {where}: bucket {self.bucket!r} does not exist")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                return StorageRefused(f"cannot {verb} {where}: access denied ({code}); check the S3 credentials")
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"):
                return StorageUnavailable(f"cannot {verb} {where}: S3 endpoint {self.endpoint} answered {code or status} "
                                          f"on each of {self.max_attempts} attempt(s)")
            return StorageError(f"cannot {verb} {where}: {code or e}")
        return StorageError(f"cannot {verb} {where}: {e}")

    def probe(self) -> None:
        """One HeadBucket with a short timeout and no retry: a silent endpoint is named in seconds, not
        after every call's retries; a missing bucket or bad credentials are found before any work."""
        from botocore.config import Config
        from botocore.exceptions import ClientError, ConnectTimeoutError, ReadTimeoutError

        t = self.probe_timeout_s
        client = self.session.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                                     config=Config(retries={"total_max_attempts": 1}, connect_timeout=t,
                                                   read_timeout=t))
        try:
            client.head_bucket(Bucket=self.bucket)
        except (ReadTimeoutError, ConnectTimeoutError):
            raise StorageUnavailable(f"S3 endpoint {self.endpoint} does not answer: no reply within {t:g} s to a "
                                     f"HeadBucket of {self.uri} (storage.probe_timeout_s)") from None
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StorageRefused(f"bucket {self.bucket!r} does not exist at S3 endpoint {self.endpoint}") from None
            raise self._error(e, "", "reach") from None
        except Exception as e:
            raise self._error(e, "", "reach") from None

    def _put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)
        except Exception as e:  # botocore raises a zoo of types; all are translated to one with the URI
            raise self._error(e, key, "write") from None

    def _get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except Exception as e:
            raise self._error(e, key, "read") from None

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except Exception as e:
            err = self._error(e, key, "check")
            if isinstance(err, NotFound):
                return False
            raise err from None

    def _list(self, prefix: str) -> Iterator[str]:
        full = self._k(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    yield obj["Key"][strip:]
        except Exception as e:
            raise self._error(e, prefix, "list") from None

    def _delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._k(key))
        except Exception as e:
            raise self._error(e, key, "delete") from None

    def _create_exclusive(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            # Conditional write: S3 (since 2024), MinIO and moto honour If-None-Match: *.
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, IfNoneMatch="*")
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise self._error(e, key, "create") from None

    def _upload_file(self, key: str, path: Path) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self._k(key), Config=self.transfer)
        except Exception as e:
            raise self._error(e, key, "upload") from None

    def _download_file(self, key: str, path: Path) -> None:
        try:
            self.client.download_file(self.bucket, self._k(key), str(path), Config=self.transfer)
        except Exception as e:
            raise self._error(e, key, "download") from None

    def _move(self, src: str, dst: str) -> None:
        try:
            self.client.copy_object(Bucket=self.bucket, Key=self._k(dst),
                                    CopySource={"Bucket": self.bucket, "Key": self._k(src)})
        except Exception as e:
            raise self._error(e, src, "move") from None
        self._delete(src)


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


# ---------------------------------------------------------------------------------------------------
# Run layout
# ---------------------------------------------------------------------------------------------------
@dataclass
class RunLayout:
    """Where one experiment round keeps its artifacts (keys relative to the storage root):

    <experiment>/lease.json                                  who runs the experiment now
    <experiment>/judge-cache/<sha>.json                      judgments, shared by every round
    <experiment>/round-<r>/prompts/prompts.jsonl             the normalised prompt list (+ .sha256)
    <experiment>/round-<r>/candidates/shard-<i>/<pid>/<k>.png
    <experiment>/round-<r>/judgments/shard-<i>/items/<pid>-<k>.json   one record per candidate, as it finishes
    <experiment>/round-<r>/judgments/shard-<i>/records.jsonl          the shard's records, written at completion
    <experiment>/round-<r>/rewards/shard-<i>/<pid>-<k>.rmap           reward map (+ .sha256)
    <experiment>/round-<r>/checkpoints/step-<n>/...                   complete when manifest.json.sha256 exists
    <experiment>/round-<r>/eval/..., report/...
    <experiment>/round-<r>/markers/<stage>/shard-<i>.json             written last: the shard is done
    <experiment>/round-<r>/quarantine/<key>.<time>                    damaged objects, set aside (+ .why)

    `before_commit`, when set, runs before every marker is written (and before a checkpoint manifest): a
    writer whose lease was taken over stops there instead of committing.
    """

    store: ObjectStore
    experiment: str
    round: int = 1
    before_commit: Optional[Callable[[], None]] = None

    def __post_init__(self) -> None:
        normalise_key(self.experiment)
        if self.round < 1:
            raise ValueError(f"round must be >= 1, got {self.round}")

    @property
    def exp_prefix(self) -> str:
        return self.experiment

    @property
    def prefix(self) -> str:
        return f"{self.experiment}/round-{self.round}"

    def key(self, *parts: Any) -> str:
        return normalise_key("/".join([self.prefix, *map(str, parts)]))

    # well-known keys
    @property
    def prompts_key(self) -> str:
        return self.key("prompts", "prompts.jsonl")

    @property
    def eval_prompts_key(self) -> str:
        return self.key("prompts", "eval_prompts.jsonl")

    @property
    def lease_key(self) -> str:
        return normalise_key(f"{self.experiment}/lease.json")

    def cache_key(self, digest: str) -> str:
        return normalise_key(f"{self.experiment}/judge-cache/{digest[:2]}/{digest}.json")

    def shard_prefix(self, area: str, shard: int) -> str:
        return self.key(area, f"shard-{shard:05d}") + "/"

    def marker_key(self, stage: str, shard: int = 0) -> str:
        from .stages.spec import STAGES

        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        return self.key("markers", stage, f"shard-{shard:05d}.json")

    def checkpoint_prefix(self, step: int) -> str:
        return self.key("checkpoints", f"step-{step:07d}") + "/"

    # completion markers
    def check_commit(self) -> None:
        if self.before_commit is not None:
            self.before_commit()

    def mark_done(self, stage: str, shard: int = 0, **summary: Any) -> None:
        self.check_commit()
        self.store.put_json(self.marker_key(stage, shard), {"stage": stage, "shard": shard, "round": self.round,
                                                             "finished_at": time.time(), **summary})

    def unmark(self, stage: str, shard: int = 0) -> None:
        """Forget that a shard is done (its output was found damaged and is being redone)."""
        self.store.delete(self.marker_key(stage, shard))

    def quarantine(self, key: str, why: str) -> str:
        """Move a damaged object (and its sidecar) aside, never deleting it, with a note saying why;
        returns its new key."""
        rel = key[len(self.prefix) + 1:] if key.startswith(self.prefix + "/") else key
        dst = self.key("quarantine", f"{rel}.{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        self.store.move(key, dst)
        self.store.put_text(dst + ".why", why + "\n")
        return dst

    def shard_done(self, stage: str, shard: int = 0) -> bool:
        return self.store.exists(self.marker_key(stage, shard))

    def marker(self, stage: str, shard: int = 0) -> Optional[dict]:
        try:
            return self.store.get_json(self.marker_key(stage, shard))
        except NotFound:
            return None

    def stage_shards_done(self, stage: str) -> List[int]:
        prefix = self.key("markers", stage) + "/"
        done = []
        for k in self.store.list(prefix):
            name = k.rsplit("/", 1)[-1]
            if name.startswith("shard-") and name.endswith(".json"):
                done.append(int(name[len("shard-"):-len(".json")]))
        return sorted(done)

    def completed_checkpoints(self) -> List[int]:
        """Steps whose checkpoint manifest is complete (its checksum sidecar exists), ascending."""
        steps = []
        for k in self.store.list(self.key("checkpoints") + "/"):
            parts = k.split("/")
            if parts[-1] == "manifest.json" and parts[-2].startswith("step-"):
                if self.store.is_complete(k):
                    steps.append(int(parts[-2][len("step-"):]))
        return sorted(steps)


# ---------------------------------------------------------------------------------------------------
# Lease
# ---------------------------------------------------------------------------------------------------
LEASE_ENV = "SRUM_LEASE"                # "<key> <token>": given to a run's child processes


class Lease:
    """An object in storage naming the run that owns an experiment. Renewed while the run is alive; a
    lease whose holder stopped renewing it (a crash) expires and can be taken over, at once when the
    holder was a process of this host that no longer exists. A renewal that fails is retried, not fatal;
    a renewal that finds another holder marks the lease lost."""

    TTL_S = 60.0

    def __init__(self, store: ObjectStore, key: str, *, warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)):
        self.store, self.key, self.warn = store, key, warn
        self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        self.lost: Optional[str] = None
        self.took_over: Optional[str] = None      # whose lease this run took over, for the log
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _body(self) -> bytes:
        return json.dumps({"holder": self.token, "expires_at": time.time() + self.TTL_S}).encode()

    def _held(self) -> dict:
        try:
            raw = self.store.get_bytes(self.key)
        except NotFound:
            return {}
        try:
            held = json.loads(raw)
        except ValueError:
            held = None
        # a damaged lease object protects nothing
        return held if isinstance(held, dict) else {"holder": "unreadable", "expires_at": 0}

    @staticmethod
    def holder_gone(holder: str) -> bool:
        """True when the holder was a process of this host that has ended."""
        host, _, rest = str(holder).partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def acquire(self) -> None:
        if not self.store.create_exclusive(self.key, self._body()):
            held = self._held()
            holder = held.get("holder", "unknown")
            expires = float(held.get("expires_at", 0) or 0)
            if expires > time.time() and not self.holder_gone(holder):
                raise LeaseHeld(f"another run holds {self.store.uri_for(self.key)} ({holder}, expires in "
                                f"{expires - time.time():.0f} s); wait for it or stop it before starting this one")
            # its holder died: take over atomically (delete, then exclusive create again)
            self.took_over = f"{holder} ({'process gone' if expires > time.time() else 'expired'})"
            self.store.delete(self.key)
            if not self.store.create_exclusive(self.key, self._body()):
                raise LeaseHeld(f"another run took {self.store.uri_for(self.key)} at the same moment")
        self._thread = threading.Thread(target=self._renew, name="srum-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        delay = self.TTL_S / 3
        failing_since: Optional[float] = None
        while not self._stop.wait(delay):
            try:
                holder = self._held().get("holder")
                if holder != self.token:
                    self.lost = f"{self.store.uri_for(self.key)} is now held by {holder}"
                    self.warn(f"warning: lease lost: {self.lost}; this run's writers will not commit")
                    return
                self.store.put_bytes(self.key, self._body())
                if failing_since is not None:
                    self.warn("lease renewed again after a storage error")
                failing_since, delay = None, self.TTL_S / 3
            except Exception as e:       # one failed write must not end the renewals: retry soon
                if failing_since is None:
                    failing_since = time.time()
                    self.warn(f"warning: cannot renew the lease {self.store.uri_for(self.key)} ({e}); retrying")
                delay = min(5.0, self.TTL_S / 6)

    def check(self) -> None:
        """Raise LeaseLost unless this run still holds the lease (writers call it before committing)."""
        holder = self._held().get("holder")
        if holder != self.token:
            raise LeaseLost(f"this run no longer holds {self.store.uri_for(self.key)} (now: {holder or 'nobody'}); "
                            "not committing; another run of the experiment took over")

    def env(self) -> dict:
        return {LEASE_ENV: f"{self.key} {self.token}"}

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self._held().get("holder") == self.token:
                self.store.delete(self.key)
        except StorageError:
            pass

    @classmethod
    def from_env(cls, store: ObjectStore) -> Optional["Lease"]:
        """The lease of the run that started this process (a child of `srum run`), or None."""
        value = os.environ.get(LEASE_ENV, "")
        key, _, token = value.partition(" ")
        if not key or not token:
            return None
        lease = cls(store, normalise_key(key))
        lease.token = token
        return lease
