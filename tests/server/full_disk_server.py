"""``nstudio`` with a disk that can be made full: a test stand-in for ENOSPC.

Run as ``python -m tests.server.full_disk_server serve ...`` with ``NSTUDIO_TEST_FULL_DISK``
naming a flag file. While that file exists every file the store writes is created and then
refused with ``ENOSPC``, as a full file system does (it leaves a zero-byte file behind); the
rest of the server is the real one. Delete the file and the disk has room again.
"""

from __future__ import annotations

import errno
import os
import sys

from server import cli, store

_FLAG = os.environ["NSTUDIO_TEST_FULL_DISK"]
_real_write_file = store._write_file


def _write_file(path, write, sync: bool = True) -> None:
    if os.path.exists(_FLAG):
        open(path, "wb").close()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    _real_write_file(path, write, sync)


store._write_file = _write_file

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
