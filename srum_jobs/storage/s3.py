"""The `s3://` store: AWS, MinIO, any S3-compatible endpoint, through boto3."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

from .base import NotFound, ObjectStore, StorageError, StorageRefused, StorageUnavailable, normalise_key


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
