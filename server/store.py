"""Durable job records and results (zguide's Titanic pattern, without its pickles).

Layout under the store folder::

    records/<job>.msgpack          one job's record: state, pipeline, times, error
    results/<job>/outputs.msgpack  the result's ``outputs`` map, arrays replaced by references
    results/<job>/<k>.npy          array k of that map (numpy format, never pickled)
    tmp/                           results being written
    records/.<job>.<random>.tmp    a record being written

A full disk (``ENOSPC``, ``EDQUOT``) is reported as :class:`~addon.wire.protocol.ProtocolError`
with code ``storage_full``: the client is told plainly, and ``internal`` stays for bugs.
Whatever a refused write left behind (zero-byte temporaries) is removed at once, and again at
start-up.

Every write goes to a temporary name first and is moved into place with ``os.replace``, so a
reader (or a server restarted after SIGKILL) sees either the old state or the new one, never a
half-written file. Every stored array carries the BLAKE2b checksum of its bytes in its
reference, and ``outputs.msgpack`` one of the outputs map; :meth:`Store.load_result` checks
them, so a flipped bit on disk is reported (:class:`CorruptResult`), never served. Result
files are fsync'ed before the move: a result is announced only once
it is on disk. Records are not fsync'ed (a restart after a process crash still sees them; after
a power cut a record may be one state behind, which :meth:`Store.open` repairs from the results
folder).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import uuid
from pathlib import Path

import msgpack
import numpy as np

from addon.wire import protocol
from addon.wire.protocol import ProtocolError

log = logging.getLogger(__name__)

_ND = "__nd__"
#: Key of a checksum in a stored array reference and in outputs.msgpack.
_SUM = "blake2b"


class StoreInUse(Exception):
    """Another server process holds the store's lock."""


class CorruptResult(ValueError):
    """A stored result's files are damaged (unreadable, or a checksum does not match)."""


class Store:
    """Job records and kept results on disk.

    Args:
        root: the store folder; created when missing.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.records = self.root / "records"
        self.results = self.root / "results"
        self.tmp = self.root / "tmp"
        self._lock_file = None

    def lock(self) -> None:
        """Take the store for this process (released by :meth:`unlock` or process exit).

        Raises:
            StoreInUse: another running server uses this store.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / "lock", "a+b")
        try:
            if os.name == "posix":
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise StoreInUse(f"the store {self.root} is in use by another server; give this "
                             "one its own --store") from None
        self._lock_file = handle

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def open(self) -> list[dict]:
        """Create the folders, drop half-written results, and load every job record.

        Returns:
            The records (plain dicts as written by :meth:`save_record`), oldest first; a record
            that cannot be read is logged and skipped; ``has_result`` reflects the disk.
        """
        for folder in (self.records, self.results, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.records.glob(".*.tmp"):     # e.g. zero-byte after ENOSPC
            leftover.unlink(missing_ok=True)
        loaded = []
        for path in self.records.glob("*.msgpack"):
            try:
                record = _checked_record(msgpack.unpackb(path.read_bytes(), raw=False), path)
                record["has_result"] = self.has_result(record["job"])
            except Exception as error:  # a damaged record must not stop the server starting
                log.error("skipping damaged job record %s: %s", path, error)
                continue
            loaded.append(record)
        loaded.sort(key=lambda r: r["created"])
        return loaded

    # Records -----------------------------------------------------------------------------

    def save_record(self, record: dict) -> None:
        """Write one job's record (atomically replacing the previous one)."""
        job_id = _checked_id(record["job"])
        data = msgpack.packb(record, use_bin_type=True)
        tmp = self.records / f".{job_id}.{uuid.uuid4().hex}.tmp"
        with self._storage_errors():
            try:
                _write_file(tmp, lambda f: f.write(data), sync=False)
                os.replace(tmp, self.records / f"{job_id}.msgpack")
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def delete(self, job_id: str) -> None:
        """Forget a job: its record and its result, if any."""
        job_id = _checked_id(job_id)
        (self.records / f"{job_id}.msgpack").unlink(missing_ok=True)
        shutil.rmtree(self.results / job_id, ignore_errors=True)

    # Results -----------------------------------------------------------------------------

    def result_bytes(self, job_id: str) -> int:
        """Size of a stored result's files (what a ``fetch`` reads into memory)."""
        folder = self.results / _checked_id(job_id)
        return sum(path.stat().st_size for path in folder.iterdir())

    def has_result(self, job_id: str) -> bool:
        return (self.results / _checked_id(job_id) / "outputs.msgpack").is_file()

    def save_result(self, job_id: str, outputs: dict) -> None:
        """Write a job's outputs to disk, fsync'ed, under their final name only when complete.

        Args:
            job_id: the job.
            outputs: the result's ``outputs`` map (numpy arrays and plain values).

        Raises:
            OSError: the disk refused (full, read-only); nothing is left behind.
            TypeError: an array dtype the protocol cannot carry.
        """
        job_id = _checked_id(job_id)
        arrays: list[np.ndarray] = []
        split = _split(outputs, arrays)
        header = msgpack.packb({"outputs": split, _SUM: _digest(_pack(split))},
                               use_bin_type=True)
        tmp = self.tmp / f"{job_id}.{uuid.uuid4().hex}"
        with self._storage_errors():
            tmp.mkdir()
            try:
                _write_file(tmp / "outputs.msgpack", lambda f: f.write(header))
                for k, array in enumerate(arrays, start=1):
                    _write_file(
                        tmp / f"{k}.npy",
                        lambda f, a=array: np.lib.format.write_array(f, a, allow_pickle=False),
                    )
                final = self.results / job_id
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                _fsync_dir(self.results)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise

    @contextlib.contextmanager
    def _storage_errors(self):
        """Turn a full disk into the protocol's ``storage_full``; other OSErrors pass."""
        try:
            yield
        except OSError as error:
            if error.errno not in _FULL:
                raise
            raise ProtocolError(
                "storage_full", f"the server's store {self.root} is full ({error.strerror}): "
                "free disk space there, or keep fewer results (--keep-days, --store-budget), "
                "then try again") from error

    def load_result(self, job_id: str) -> dict:
        """Read a stored result's ``outputs``; arrays are read-only, read into memory.

        Each file is opened, read and closed in turn: a reply in flight holds memory, never
        file descriptors (memory maps would keep one open per array, and a result of a few
        thousand arrays could then not be fetched at all under the usual limit of 1024).

        Raises:
            FileNotFoundError: no stored result for this job.
            OSError: unreadable files (too many open files, I/O error).
            CorruptResult: the stored files are damaged.
        """
        folder = self.results / _checked_id(job_id)
        data = (folder / "outputs.msgpack").read_bytes()
        try:
            header = msgpack.unpackb(data, raw=False)
            # Results written before checksums existed have none and are served as they are.
            if _SUM in header and _digest(_pack(header["outputs"])) != header[_SUM]:
                raise CorruptResult(f"{folder / 'outputs.msgpack'} fails its checksum")
            return _join(header["outputs"], folder)
        except (CorruptResult, FileNotFoundError):
            raise
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as error:
            raise CorruptResult(f"the stored result in {folder} is damaged: "
                                f"{type(error).__name__}: {error}") from None


def _split(value, arrays: list):
    """Replace every array in ``value`` by ``{"__nd__": k, ...}``, appending it to ``arrays``."""
    if isinstance(value, np.ndarray):
        if value.dtype.str.startswith(">"):
            value = value.astype(value.dtype.newbyteorder("<"))
        if value.dtype.str not in protocol.ALLOWED_DTYPES:
            raise TypeError(f"dtype {value.dtype.str} cannot be stored")
        # C order on disk, so that the checksum of the bytes read back is the one written.
        if not value.flags.c_contiguous:
            value = value.copy(order="C")     # (np.ascontiguousarray would make 0-d arrays 1-d)
        arrays.append(value)
        return {_ND: len(arrays), "dtype": value.dtype.str, "shape": list(value.shape),
                _SUM: _digest(_bytes_of(value))}
    if isinstance(value, dict):
        return {key: _split(item, arrays) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(item, arrays) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _join(value, folder: Path):
    """Inverse of :func:`_split`: load the referenced ``.npy`` files (memory-mapped)."""
    if isinstance(value, dict):
        if _ND in value:
            return _load_array(value, folder)
        return {key: _join(item, folder) for key, item in value.items()}
    if isinstance(value, list):
        return [_join(item, folder) for item in value]
    return value


def _load_array(ref: dict, folder: Path) -> np.ndarray:
    index = ref[_ND]
    if not isinstance(index, int) or isinstance(index, bool):
        raise ValueError(f"damaged result in {folder}: bad array reference {ref!r}")
    path = folder / f"{index}.npy"
    shape = tuple(ref["shape"])
    array = np.load(path, allow_pickle=False)     # opened, read, closed
    if array.dtype.str != ref["dtype"] or array.shape != shape:
        raise ValueError(
            f"damaged result: {path} holds {array.dtype.str} {list(array.shape)}, "
            f"expected {ref['dtype']} {list(shape)}"
        )
    if _SUM in ref and _digest(_bytes_of(array)) != ref[_SUM]:
        raise CorruptResult(f"{path} fails its checksum (the file changed after it was written)")
    array.flags.writeable = False
    return array


def _pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _bytes_of(array: np.ndarray) -> memoryview:
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    return memoryview(array.reshape(-1).view(np.uint8))


def _digest(data) -> str:
    """The checksum kept with every stored array and outputs map: BLAKE2b, 128 bits, hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


#: errno values that mean "no room": the disk is full or the user's quota is used up.
_FULL = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code)


def _write_file(path: Path, write, sync: bool = True) -> None:
    """Create ``path`` and fill it with ``write(file)``; fsync'ed unless ``sync`` is False.

    Every byte the store writes goes through here (tests make the disk "full" at this point).
    """
    with open(path, "wb") as f:
        write(f)
        f.flush()
        if sync:
            os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked_record(record, path: Path) -> dict:
    """A record read back from disk, checked field by field before anything trusts it.

    Raises:
        ValueError: naming the first field that is missing or of the wrong kind.
    """
    if not isinstance(record, dict):
        raise ValueError(f"not a job record but {type(record).__name__}")
    job_id = record.get("job")
    try:
        _checked_id(job_id)
    except ValueError:
        raise ValueError(f"'job' is not a job id: {job_id!r}") from None
    if path.stem != job_id:
        raise ValueError(f"'job' {job_id!r} does not match the file name")
    if not isinstance(record.get("pipeline"), str):
        raise ValueError(f"'pipeline' must be a string, not {record.get('pipeline')!r}")
    if record.get("state") not in protocol.JOB_STATES:
        raise ValueError(f"'state' {record.get('state')!r} is not a job state")
    if not _is_number(record.get("created")):
        raise ValueError(f"'created' must be a number, not {record.get('created')!r}")
    if record.get("finished") is not None and not _is_number(record["finished"]):
        raise ValueError(f"'finished' must be a number or nil, not {record['finished']!r}")
    for name in ("step", "total"):
        if name in record and not (isinstance(record[name], int)
                                   and not isinstance(record[name], bool)):
            raise ValueError(f"{name!r} must be an int, not {record[name]!r}")
    if "keep" in record and not isinstance(record["keep"], bool):
        raise ValueError(f"'keep' must be a bool, not {record['keep']!r}")
    error = record.get("error")
    if error is not None and not (isinstance(error, dict) and isinstance(error.get("code"), str)
                                  and isinstance(error.get("message"), str)):
        raise ValueError(f"'error' must be nil or a map with a code and a message, not {error!r}")
    return record


def _checked_id(job_id: str) -> str:
    # Job ids become file names: only our own hex ids may reach the file system.
    if not (isinstance(job_id, str) and 0 < len(job_id) <= 64 and job_id.isalnum()
            and job_id.isascii()):
        raise ValueError(f"not a job id: {job_id!r}")
    return job_id
