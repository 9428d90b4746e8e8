"""The docs are true (issue 20, findings 6, 8 and 11): the example server.yaml, the README's model config
example, the security statements and the README's runnable command blocks, checked against the code.

Runnable README blocks are marked by the line `<!-- ci: run -->` right before their fence (```sh or
```python). This test runs every marked block, whichever exist, against a real server on a free port:
`127.0.0.1:8001` in a block is replaced by that server's address (and `$CNN_SERVER` is set to it),
`.venv/bin/cnn` / `.venv/bin/python` run this checkout's interpreter. A marked block whose command fails
fails the test; blocks without the mark (training for minutes, Docker, Kubernetes) are never run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess

import yaml

from server.config import ServerConfig, load_config
from tests.conftest import MODEL_NAME, PY, ROOT

MARK = "<!-- ci: run -->"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def fenced_blocks(text: str) -> list[tuple[str, str, bool]]:
    """(language, body, marked) for every fenced block of a Markdown text."""
    out = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        out.append((m.group(1), m.group(2), before == MARK))
    return out


# ---------------------------------------------------------------------------------------- examples/server.yaml


def test_example_server_yaml_loads_and_covers_every_key():
    path = ROOT / "examples" / "server.yaml"
    keys = set(yaml.safe_load(path.read_text()))
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    assert keys == fields, (
        f"missing from examples/server.yaml: {sorted(fields - keys)}; unknown: {sorted(keys - fields)}"
    )
    assert load_config(path, env={}) == ServerConfig(), "examples/server.yaml must show every default as it is"
    text = path.read_text()
    for key in fields:  # every key is explained on its line, once (YAML keeps the last of two silently)
        lines = [ln for ln in text.splitlines() if ln.startswith(f"{key}:")]
        assert len(lines) == 1, f"{key} is set {len(lines)} times in examples/server.yaml"
        line = lines[0]
        assert "#" in line and len(line.split("#", 1)[1].strip()) > 10, line


def test_cnn_serve_accepts_the_example_config():
    free = ["--grpc-address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0"]
    r = subprocess.run(
        [
            PY,
            "-m",
            "client.cli",
            "serve",
            "--config",
            "examples/server.yaml",
            "--repository",
            "/nonexistent-repository",
            *free,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # the config is valid: the start gets as far as the repository, which does not exist
    assert r.returncode == 2 and "/nonexistent-repository" in r.stderr and "config" not in r.stderr.lower(), r.stderr


# ---------------------------------------------------------------------------------------- README: model config


def _matches(doc, written, where: str) -> None:
    if isinstance(doc, dict):
        assert isinstance(written, dict), where
        for k, v in doc.items():
            assert k in written, f"{where}.{k}: in the README, not written by export"
            _matches(v, written[k], f"{where}.{k}")
    else:
        assert doc == written, f"{where}: README says {doc!r}, export writes {written!r}"


def test_readme_model_config_example_is_what_export_writes(model_repository):
    readme = (ROOT / "README.md").read_text()
    examples = [body for lang, body, _ in fenced_blocks(readme) if lang == "yaml" and body.startswith("name: ")]
    assert len(examples) == 1, "README.md has one model config.yaml example (a yaml block starting with name:)"
    doc = yaml.safe_load(examples[0])
    written = yaml.safe_load((model_repository / MODEL_NAME / "config.yaml").read_text())
    _matches(doc, written, "config.yaml")
    left_out = set(written) - set(doc) - {"platform"}
    assert not left_out, f"export writes keys the README example does not show: {sorted(left_out)}"


# ---------------------------------------------------------------------------------------- security statements


def test_docs_do_not_say_the_server_lacks_tls_or_authentication():
    for path in DOCS:
        text = " ".join(path.read_text().split())
        for claim in ("no TLS", "without TLS or authentication", "no authentication", "has no TLS"):
            for m in re.finditer(re.escape(claim), text):
                context = text[max(0, m.start() - 200) : m.end() + 200]
                assert "default" in context or "off" in context or "starts the server without" in context, (
                    f"{path.name}: '{claim}' but the server has TLS and tokens (tls_cert_file, auth_tokens_file): {context}"
                )


def test_security_settings_named_in_the_docs_are_configuration_keys():
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    named = set()
    for path in DOCS + [ROOT / "examples" / "server.yaml"]:
        named |= set(re.findall(r"\b((?:tls|auth)_[a-z_]+)\b", path.read_text()))
    assert {"tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_tokens_file"} <= named
    assert named <= fields, f"docs name settings that do not exist: {sorted(named - fields)}"
    for key in named:  # and each has the flag the docs and `cnn serve --help` give it
        flag = "--" + key.replace("_", "-")
        help_text = subprocess.run(
            [PY, "-m", "client.cli", "serve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
        ).stdout
        assert flag in help_text, flag


def test_rpc_groups_in_the_docs_are_the_servers():
    from server.security import GROUPS, load_tokens

    readme = (ROOT / "README.md").read_text()
    m = re.search(r"Bearer tokens per group of RPCs \(([^)]*)\)", " ".join(readme.split()))
    assert m, "README names the token groups"
    assert re.findall(r"`(\w+)`", m.group(1)) == list(GROUPS)
    ops = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    assert all(f"`{g}`" in ops for g in GROUPS)
    # the README's tokens file example is one the server loads
    example = next(body for lang, body, _ in fenced_blocks(readme) if lang == "yaml" and body.startswith("inference:"))
    tmp = ROOT / ".pytest-tokens-example.yaml"
    try:
        tmp.write_text(example.replace("...", "12345678"))
        assert set(load_tokens(str(tmp))) == {"inference", "statistics", "repository"}
    finally:
        tmp.unlink(missing_ok=True)


def test_readme_limits_table_shows_the_configured_defaults():
    c = ServerConfig()
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("|")
    ]
    expected = {
        "grpc_address": c.grpc_address,
        "metrics_address": c.metrics_address,
        "max_message_bytes": f"{c.max_message_bytes // 2**20} MiB",
        "max_image_pixels": f"{c.max_image_pixels:,}",
        "max_images_per_request": str(c.max_images_per_request),
        "drain_grace_s": f"{c.drain_grace_s:g} s",
        "allow_model_control": "off" if not c.allow_model_control else "on",
    }
    for key, shown in expected.items():
        row = next((r for r in rows if len(r) >= 3 and f"`{key}`" in r[2]), None)
        assert row, f"README limits table has a row for {key}"
        assert shown in row[1], f"{key}: README default {row[1]!r}, server default {shown!r}"


# ---------------------------------------------------------------------------------------- README command blocks


def _runnable(block: str, address: str) -> str:
    block = block.replace("127.0.0.1:8001", address)
    tools = {"cnn": f"{PY} -m client.cli", "python": PY}
    return re.sub(r"(?<![\w/])\.venv/bin/(cnn|python)\b", lambda m: tools[m.group(1)], block)


def marked_blocks() -> list[tuple[str, str]]:
    return [(lang, body) for lang, body, marked in fenced_blocks((ROOT / "README.md").read_text()) if marked]


def test_readme_marks_runnable_blocks_only_where_they_can_run():
    blocks = marked_blocks()
    assert blocks, f"README.md marks no block with {MARK}"
    assert all(lang in ("sh", "python") for lang, _ in blocks), [lang for lang, _ in blocks]


def test_readme_marked_blocks_run(server):
    """Every marked block, in README order; all failures are reported together."""
    failures = []
    for index, (lang, body) in enumerate(marked_blocks()):
        code = _runnable(body, server.address)
        env = {**os.environ, "CNN_SERVER": server.address, "PYTHONPATH": str(ROOT)}
        cmd = ["bash", "-c", "set -e\n" + code] if lang == "sh" else [PY, "-c", code]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        if p.returncode != 0 or "Traceback" in p.stderr:
            failures.append(
                f"README block {index} ({lang}) exit {p.returncode}:\n{body}\nstdout:\n{p.stdout[-2000:]}\n"
                f"stderr:\n{p.stderr[-2000:]}"
            )
    assert not failures, "\n\n".join(failures)
