"""What a model name may be, checked before any file is touched (RepositoryModelLoad/Unload, polling).

A name is a single folder name inside the repository: letters, digits, `_`, `.` and `-`, starting with a
letter or digit, at most MAX_MODEL_NAME_CHARS characters, and no `..` anywhere. So it can never be a
path (no `/`, `\\`, NUL, `..`, absolute or drive prefixes) and its length can never reach the
filesystem's limits. Every invalid name gets the same message, which does not repeat the name, so the
answer says nothing about which paths exist on the host.
"""

from __future__ import annotations

import re

from server.errors import InvalidInput

MAX_MODEL_NAME_CHARS = 128
_NAME_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_MODEL_NAME_CHARS - 1}}}")
INVALID_NAME_MESSAGE = (
    f"model_name: not a valid model name (1-{MAX_MODEL_NAME_CHARS} characters: letters, digits, '_', "
    "'.', '-', starting with a letter or digit; no '..')"
)


def is_model_name(name: object) -> bool:
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None and ".." not in name


def check_model_name(name: object) -> str:
    """`name` if it is a valid model name, else InvalidInput with the one message every invalid name gets."""
    if not is_model_name(name):
        raise InvalidInput(INVALID_NAME_MESSAGE)
    return name  # type: ignore[return-value]
