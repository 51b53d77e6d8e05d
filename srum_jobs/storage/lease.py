"""The lease: one object in storage naming the run that owns an experiment, so two runs never write at
once; every writer of a run checks it before committing a marker or a checkpoint."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Callable, Optional

from .base import LeaseLost, LeaseHeld, NotFound, ObjectStore, StorageError, normalise_key

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
