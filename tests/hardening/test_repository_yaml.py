"""Finding 1: a YAML alias bomb (or just a big file) in one model's config.yaml.

On 0e6d6fb config files were parsed on the event loop on every poll, and validation messages printed
the alias-expanded value: a few hundred bytes stalled every caller for seconds per poll, wrote
enormous log lines and made RepositoryIndex fail for every model. Now the file is refused for its
model alone, with a short message, and the other models keep serving at their usual latency.
"""

from __future__ import annotations

import time

import grpc

from tests.hardening.conftest import p50, paced_latencies, serve
from tests.reliability.helpers import Stubs, pb

LEVELS = 6  # 9**6 = 531,441 references to 40-char strings: < 1 KB of YAML, a 26 MB repr once expanded
BRIEF = 2000  # any reason RepositoryIndex gives must be shorter than this


def alias_bomb(levels: int = LEVELS) -> str:
    """`providers: [&x0 [9 strings], &x1 [*x0 x 9], ...]`: anchors defined inside a key the config knows, so
    the value reaches validation (which, on 0e6d6fb, printed it: 9**levels strings)."""
    items = ["&x0 [" + ", ".join(['"' + "x" * 40 + '"'] * 9) + "]"]
    for i in range(1, levels):
        items.append(f"&x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]")
    return "name: bomb\nproviders: [" + ", ".join(items) + "]\n"


def _index(address: str) -> dict[tuple[str, str], tuple[str, str]]:
    with Stubs(address) as s:
        r = s.infer.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
    return {(m.name, m.version): (m.state, m.reason) for m in r.models}


def test_alias_bomb_is_refused_for_its_model_only_and_stalls_nobody(repo):
    assert len(alias_bomb()) < 1000
    s = serve(repo, "--poll-interval-s", "0.3")
    try:
        before = paced_latencies(s.address, 2.0)
        bomb = repo / "bomb"
        (bomb / "1").mkdir(parents=True)
        (bomb / "1" / "model.onnx").write_bytes((repo / "scale" / "1" / "model.onnx").read_bytes())
        (bomb / "config.yaml").write_text(alias_bomb())
        time.sleep(0.5)  # the poller has seen it (and, on 0e6d6fb, is chewing on it)
        during = paced_latencies(s.address, 4.0)

        # a well-behaved client's latency while the poller re-reads the bad file every 0.3 s
        assert p50(during) < 5 * p50(before) + 0.05, (p50(before), p50(during), max(during))
        assert max(during) < 1.0, (p50(before), p50(during), max(during))
        index = _index(s.address)  # on 0e6d6fb: RESOURCE_EXHAUSTED (the reason alone is > 16 MiB)
        state, reason = next(v for (name, _), v in index.items() if name == "bomb")
        assert state == "UNAVAILABLE"
        assert len(reason) < BRIEF and "alias" in reason, reason[:BRIEF]
        assert index[("scale", "1")][0] == "READY"
        assert s.log_path.stat().st_size < 1_000_000, "the server log grew by a huge line"
    finally:
        assert s.stop() == 0, s.log()[-3000:]


def test_big_config_is_refused_by_size_for_its_model_only(repo):
    """A config.yaml far above any real one (here 2 MiB of comments) is refused before it is parsed."""
    big = repo / "big"
    (big / "1").mkdir(parents=True)
    (big / "1" / "model.onnx").write_bytes((repo / "scale" / "1" / "model.onnx").read_bytes())
    (big / "config.yaml").write_text(("# " + "c" * 1000 + "\n") * 2048 + "name: big\n")
    s = serve(repo, "--poll-interval-s", "0.3")
    try:
        before = paced_latencies(s.address, 1.5)
        index = _index(s.address)
        state, reason = next(v for (name, _), v in index.items() if name == "big")
        assert state == "UNAVAILABLE" and "bytes" in reason and len(reason) < BRIEF, reason[:BRIEF]
        assert index[("scale", "1")][0] == "READY"
        during = paced_latencies(s.address, 2.0)
        assert p50(during) < 5 * p50(before) + 0.05, (p50(before), p50(during))
    finally:
        assert s.stop() == 0


def test_bad_yaml_message_is_bounded_and_names_the_line(repo):
    """A syntax error on a megabyte-long line: the reason names the file and line, and does not quote it."""
    bad = repo / "badline"
    (bad / "1").mkdir(parents=True)
    (bad / "1" / "model.onnx").write_bytes((repo / "scale" / "1" / "model.onnx").read_bytes())
    (bad / "config.yaml").write_text("name: badline\nproviders: [" + "cpu, " * 20000 + "\n  : ]\n")
    s = serve(repo)
    try:
        with Stubs(s.address) as st:
            r = st.infer.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
            reasons = [m.reason for m in r.models if m.name == "badline"]
            assert reasons and len(reasons[0]) < BRIEF and "config.yaml" in reasons[0], reasons
            ok = st.infer.ModelReady(pb.ModelReadyRequest(name="scale"), timeout=10)
            assert ok.ready
    except grpc.RpcError as e:
        raise AssertionError(f"{e.code()}: {e.details()[:500]}") from None
    finally:
        assert s.stop() == 0
