"""Finding 7: RepositoryModelLoad / Unload take a model name, never a path.

On 0e6d6fb `/etc` answered FAILED_PRECONDITION and `/nonexistent-dir` NOT_FOUND (an oracle for which
host folders exist), and a 300-character name answered INTERNAL. Now every invalid name gets the same
INVALID_ARGUMENT with the same message, before any file is looked at.
"""

from __future__ import annotations

import grpc
import pytest

from tests.hardening.conftest import serve
from tests.reliability.helpers import Stubs, pb

INVALID = [
    "/etc",
    "/nonexistent-dir",
    "../scale",
    "scale/..",
    "..",
    ".",
    "a" * 300,
    "a/b",
    "",
    "scale\x00",
    "C:\\Windows",
    "-dash",
    "x..y",
    "\u00e9t\u00e9",
]


@pytest.fixture
def control(repo):
    s = serve(repo, "--allow-model-control")
    yield s
    assert s.stop() == 0


def _answer(call, name: str) -> tuple[grpc.StatusCode, str]:
    try:
        call(name)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def test_every_invalid_name_gets_the_same_answer(control):
    with Stubs(control.address) as s:

        def load(n: str):
            return s.infer.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=n), timeout=30)

        def unload(n: str):
            return s.infer.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=n), timeout=30)

        for call in (load, unload):
            answers = {n: _answer(call, n) for n in INVALID}
            codes = {a[0] for a in answers.values()}
            messages = {a[1] for a in answers.values()}
            assert codes == {grpc.StatusCode.INVALID_ARGUMENT}, answers
            assert len(messages) == 1 and "model_name" in messages.pop(), answers
        # a valid name that is not there is still NOT_FOUND, and a real one loads
        assert _answer(load, "not-there")[0] == grpc.StatusCode.NOT_FOUND
        assert _answer(load, "scale") == (grpc.StatusCode.OK, "")
        assert s.infer.ModelReady(pb.ModelReadyRequest(name="scale"), timeout=10).ready
