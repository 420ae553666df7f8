"""File-system checks shared by the entry points."""
import contextlib
import os
import tempfile

PROBE_PREFIX = ".tmp_write_probe_"
# Temporary files of ``replaced_atomically`` start with this (so a folder's leftovers of
# killed writes can be found); so do MindSpore's own next to a checkpoint's (``<temp>.tmp``).
TEMP_PREFIX = ".tmp_"


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


@contextlib.contextmanager
def replaced_atomically(path, suffix=""):
    """Yield a temporary file name in ``path``'s folder (ending in ``suffix``, for writers that
    read the format from it); when the block ends it is renamed over ``path``, so ``path`` is
    never seen half written. On an error the temporary file is removed instead."""
    handle, temporary = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix,
                                         dir=os.path.dirname(os.path.abspath(path)))
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text_atomic(path, text):
    """Write ``text`` (UTF-8) to ``path`` through ``replaced_atomically``."""
    with replaced_atomically(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)
