"""The `file://` store (the embedded default)."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Union

from .base import TEMP_SUFFIX, InvalidKey, NotFound, ObjectStore, StorageRefused, normalise_key, os_error


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
