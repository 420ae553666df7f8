"""File-system checks shared by the entry points."""
import os
import tempfile

PROBE_PREFIX = ".tmp_write_probe_"


def cannot_write_reason(folder):
    """Why no file can be created in ``folder`` (the OS's words), or "" when one can.

    A probe file is created and removed: permission bits do not tell (root ignores them;
    read-only mounts and /sys refuse root too).
    """
    try:
        handle, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=folder)
    except OSError as error:
        return error.strerror or str(error)
    os.close(handle)
    os.remove(probe)
    return ""
