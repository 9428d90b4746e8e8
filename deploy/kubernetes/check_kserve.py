"""Check KServe manifests offline against the KServe SDK's own model classes.

    .venv-tools/bin/python deploy/kubernetes/check_kserve.py deploy/kubernetes/kserve/*.yaml

Each InferenceService / ServingRuntime / ClusterServingRuntime document is deserialized into the SDK's
generated class (V1beta1InferenceService, ...) with the generated deserializer, then serialized back
(`sanitize_for_serialization`, i.e. to_dict() with the JSON field names and without unset fields). The
deserializer silently drops fields it does not know, so any difference between the round trip and the
input is a misspelled or misplaced field (or a value of the wrong type); each is printed and the exit
status is 1. Other kinds (a Kustomization) are skipped.

Runs in .venv-tools (scripts/setup.sh --system): the `kserve` wheel is installed there without its
dependencies (it pins grpcio/protobuf/fastapi... that clash with the project's), beside `kubernetes`,
whose model classes (V1Container, V1ObjectMeta, ...) KServe's refer to by name. kserve/__init__.py,
which imports the whole model server, is never executed: only kserve.models and kserve.configuration.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
}
HINT = "run scripts/setup.sh --system (installs the kserve SDK and kubernetes into .venv-tools)"


def load_sdk():
    """(kserve.models, a kubernetes ApiClient whose deserializer also knows KServe's classes)."""
    # This script's folder holds the kserve/ manifests: never mistake it for the SDK (a namespace package).
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.util.find_spec("kserve")
    if spec is None or spec.origin is None or not spec.submodule_search_locations:
        sys.exit(f"check_kserve: the kserve SDK is not installed in {sys.prefix}: {HINT}")
    pkg = types.ModuleType("kserve")  # an empty package: kserve.models imports without kserve/__init__.py
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    sys.modules["kserve"] = pkg
    try:
        import kserve.models as kserve_models
        import kubernetes.client as k8s
    except ImportError as e:
        sys.exit(f"check_kserve: {e}: {HINT}")
    # The generated deserializer resolves type names in kubernetes.client.models: give it KServe's too.
    for name in dir(kserve_models):
        if name.startswith("V1") and not hasattr(k8s.models, name):
            setattr(k8s.models, name, getattr(kserve_models, name))
    return kserve_models, k8s.ApiClient()


def differences(given, round_trip, path: str = "") -> list[str]:
    """Where `round_trip` (what the SDK kept) differs from `given` (the manifest)."""
    if isinstance(given, dict) and isinstance(round_trip, dict):
        out = []
        for key, value in given.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in round_trip:
                if value is not None:
                    out.append(f"{where}: unknown or misplaced field (the SDK model has no '{key}' here)")
            else:
                out += differences(value, round_trip[key], where)
        for key in round_trip.keys() - given.keys():
            # A generated constructor's default (name='', enabled=False, ...) is not the manifest's doing.
            if round_trip[key] not in ("", 0, False):
                out.append(f"{path}.{key}: added by the SDK round trip ({round_trip[key]!r})")
        return out
    if isinstance(given, list) and isinstance(round_trip, list) and len(given) == len(round_trip):
        return [d for i, (a, b) in enumerate(zip(given, round_trip)) for d in differences(a, b, f"{path}[{i}]")]
    if given != round_trip or type(given) is not type(round_trip):
        return [f"{path}: manifest has {given!r} ({type(given).__name__}), the SDK model keeps {round_trip!r}"]
    return []


def check(doc: dict, client) -> tuple[str | None, list[str]]:
    """(class name or None when the kind is not KServe's, problems)."""
    klass = KINDS.get((doc.get("apiVersion"), doc.get("kind")))
    if klass is None:
        return None, []
    try:
        obj = client._ApiClient__deserialize(doc, klass)  # the SDK's generated deserializer
    except (ValueError, TypeError, AttributeError) as e:  # required fields missing, bad enum values, ...
        return klass, [f"rejected by {klass}: {e}"]
    return klass, differences(doc, client.sanitize_for_serialization(obj))


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    _, client = load_sdk()
    import yaml  # a dependency of kubernetes, so present once load_sdk() succeeded
    failed = checked = 0
    for path in argv:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            klass, problems = check(doc, client)
            if klass is None:
                continue
            checked += 1
            name = f"{path}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            if problems:
                failed += 1
                print(f"FAIL {name} ({klass})")
                for p in problems:
                    print(f"  {p}")
            else:
                print(f"ok   {name} ({klass})")
    if checked == 0:
        print("check_kserve: no KServe resources in the given files", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
