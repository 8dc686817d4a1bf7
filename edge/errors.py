"""The one exception type that means "the user gave us something we cannot use", and the
cleaning of text that came from a user's file before we print it.

The CLI turns an `EdgeError` into a one-line message and exit code 2; any other
exception is our bug and keeps its traceback (except a full or read-only disk and a
closed pipe, which `edge.cli.main` reports as the environment's, not ours).
"""

from __future__ import annotations

import errno
import re


class EdgeError(Exception):
    """Bad input or an unusable environment: one line, naming the value and what to do."""

    exit_code = 2


class NotAModel(EdgeError):
    """A readable GGUF that is not a language model (an importance matrix, a projector, a
    vocabulary): callers that list a folder's models skip it by this type, not by its text."""

    def __init__(self, message: str, gguf_type: str = ""):
        super().__init__(message)
        self.gguf_type = gguf_type  # general.type: "imatrix", "adapter", ...


# C0/C1 control characters (ESC starts terminal escape sequences), DEL, and the line/paragraph
# separators some terminals treat as newlines. Lone surrogates come from undecodable file names.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def printable(text, limit: int = 0) -> str:
    """`text` as one safe line: control characters (terminal escapes, newlines, undecodable
    bytes of a file name) shown escaped, never sent to the terminal; cut at `limit` (0: no cut)."""
    s = _CONTROL.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii")
                     if not "\ud800" <= m.group() <= "\udfff" else f"\\x{ord(m.group()) - 0xdc00:02x}",
                     str(text))
    if limit and len(s) > limit:
        s = s[:limit] + "..."
    return s


# errno values that mean "the machine cannot take this write", not a bug of ours.
_DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted"}
_DISK_WORDS = (("No space left", errno.ENOSPC), ("StorageFull", errno.ENOSPC), ("Read-only file system", errno.EROFS),
               ("Permission denied", errno.EACCES), ("file write failed", errno.ENOSPC))


def environment_error(e: BaseException) -> str | None:
    """A full or read-only disk, or a folder we may not write, as one line; None for anything
    else. Also inside libraries that wrap the OSError (safetensors' SafetensorError, torch's
    "file write failed")."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            where = f" ({printable(e.filename, 120)})" if e.filename else ""
            return f"{_DISK_ERRNOS[e.errno]}{where}; free some space or choose a folder you can write"
        if type(e).__name__ in ("SafetensorError", "RuntimeError") or isinstance(e, OSError):
            for word, code in _DISK_WORDS:
                if word in str(e):
                    return f"{_DISK_ERRNOS[code]} while writing; free some space or choose a folder you can write"
        e = e.__cause__ or e.__context__
    return None
