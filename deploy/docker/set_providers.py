"""Set `providers` in a model's config.yaml (server/repository.py ModelConfig): set_providers.py FILE cuda,cpu."""

import sys
from pathlib import Path

import yaml

path, providers = Path(sys.argv[1]), [p.strip() for p in sys.argv[2].split(",") if p.strip()]
if not providers or any(p not in ("cpu", "cuda") for p in providers):
    sys.exit(f"set_providers: providers must be a comma-separated list of cpu / cuda, got {sys.argv[2]!r}")
cfg = yaml.safe_load(path.read_text()) or {}
if cfg.get("providers") != providers:
    cfg["providers"] = providers
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    tmp.replace(path)
print(f"set_providers: {path}: providers {providers}")
