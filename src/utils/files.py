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


def write_text_atomic(path, text):
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so
    ``path`` is never seen half written; the temporary file is removed if the write fails."""
    handle, temporary = tempfile.mkstemp(prefix=".tmp_", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
