"""Errors of the export path.

`ExportError`: a problem the user can act on (bad checkpoint path, unknown name, bad repository);
the CLI prints it on one line and exits 2. `VerificationError`: the exported model failed the gate
(checker, parity, external data); nothing was published; the CLI exits 1.
"""

from __future__ import annotations


class ExportError(ValueError):
    exit_code = 2


class VerificationError(ExportError):
    exit_code = 1
