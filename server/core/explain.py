"""Explain, the core's entry point for explanations (types in server/core/types.py): the CAM graph a
version loads beside its model, and the model runs an explanation makes. server/explain.py has the numpy.

`InferenceService.explain` resolves the model and decodes and preprocesses the images exactly as
`classify` does, then calls `explain_images` here:

    CAM models       (metadata extra.explain.method "cam"): the version's CamRunner, the CAM graph
                     explain.onnx opened with the model's own config (instances, threads, isolation,
                     warm-up) behind its own DynamicBatcher, loaded and retired with the version; one run
                     gives the probabilities and the feature maps, the maps are numpy (server/explain.py).
    everything else  occlusion: one batch per image (the image + one copy per patch, plan_for keeps it
                     within max_batch_size) through the version's own batcher.

The service records the request in the version's statistics and `inference_rows` (the rows the model
computed) the way classify does; overlays are drawn off the event loop when there are several.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.core.batcher import DynamicBatcher
from server.core.types import ExplainRequest, Heatmap, Prediction
from server.errors import InvalidInput, RepositoryError
from server.explain import (
    EXPLAIN_FILE,
    METHOD_CAM,
    METHOD_OCCLUSION,
    CamHead,
    cam_explain,
    class_maps,
    explain_method,
    occlusion_explain,
    occlusion_inputs,
    overlay_shape,
    plan_for,
)
from server.repository import ModelConfig, ModelMetadata
from server.runtime import Runtime, open_runtime

log = logging.getLogger(__name__)

# Overlays for more than this many maps in one request are drawn in a worker thread (~1 ms each at 224x224).
INLINE_OVERLAYS_MAX = 2
MAX_CLASS_INDICES = 64


# --------------------------------------------------------------------------------------------------
# the CAM graph of a version


@dataclass
class CamRunner:
    """explain.onnx of one version, warm, behind its own batcher."""

    runtime: Runtime
    batcher: DynamicBatcher
    head: CamHead

    async def close(self) -> None:
        await self.batcher.close(drain=True)
        await self.runtime.aclose()


def open_cam_runtime(
    model_path: Path, config: ModelConfig, version: int, metadata: ModelMetadata
) -> tuple[Runtime, CamHead] | None:
    """Blocking (off the loop): the CAM graph's runtime and classifier for a "cam" model, None for others.
    RepositoryError when the metadata names CAM and the graph is missing or does not fit the model."""
    if explain_method(metadata.extra) != METHOD_CAM:
        return None
    path = Path(model_path).parent / EXPLAIN_FILE
    if not path.is_file():
        raise RepositoryError(f"{path}: the model's metadata says explain.method 'cam' but its CAM graph is missing")
    runtime = open_runtime(path, config, version)
    try:
        head = CamHead.from_extra(runtime.metadata.extra, str(path))
        outputs = {o.name for o in runtime.outputs}
        missing = {"probabilities", head.features_output} - outputs
        if missing:
            raise RepositoryError(f"{path}: the CAM graph lacks output(s) {', '.join(sorted(missing))}")
        if list(runtime.metadata.labels) != list(metadata.labels) or runtime.input.shape != tuple(metadata.input_shape):
            raise RepositoryError(f"{path}: the CAM graph's labels or input shape differ from model.onnx's")
    except Exception:
        runtime.close()
        raise
    return runtime, head


def open_with_cam(
    model_path: Path, config: ModelConfig, version: int
) -> tuple[Runtime, tuple[Runtime, CamHead] | None]:
    """Blocking (off the loop): a version's runtime, and its CAM graph's when its metadata names "cam"."""
    runtime = open_runtime(model_path, config, version)
    try:
        return runtime, open_cam_runtime(model_path, config, version, runtime.metadata)
    except Exception:
        runtime.close()
        raise


# --------------------------------------------------------------------------------------------------
# one request


def check_request(req: ExplainRequest, num_classes: int, height: int, width: int) -> None:
    """Refuse what the maps cannot answer before any model runs (messages name the field)."""
    if len(req.class_indices) > MAX_CLASS_INDICES:
        raise InvalidInput(f"'class_indices' has {len(req.class_indices)} entries; at most {MAX_CLASS_INDICES}")
    for i, c in enumerate(req.class_indices):
        if not 0 <= int(c) < num_classes:
            raise InvalidInput(f"class_indices[{i}]: {int(c)} is not a class of this model (0..{num_classes - 1})")
    if req.overlay:
        overlay_shape(height, width, req.overlay_size)


async def run_maps(
    x: np.ndarray,
    req: ExplainRequest,
    *,
    batcher: DynamicBatcher,
    input_name: str,
    max_batch_size: int,
    cam: CamRunner | None,
    num_classes: int,
    deadline: float | None,
) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, int]:
    """The model runs of one request: (method, probabilities (N, K), classes (N, m), maps (N, m, H, W),
    rows computed)."""
    n, _, h, w = x.shape
    if cam is not None:
        mb = max_batch_size
        name = cam.runtime.input.name
        results = await asyncio.gather(
            *(cam.batcher.submit({name: x[i : i + mb]}, len(x[i : i + mb]), deadline) for i in range(0, n, mb))
        )
        probs = np.concatenate([r["probabilities"] for r in results]).astype(np.float32).reshape(n, -1)
        feats = np.concatenate([r[cam.head.features_output] for r in results])
        classes, maps = cam_explain(probs, feats, cam.head, req.class_indices, h, w)
        return METHOD_CAM, probs, classes, maps, n
    plan = plan_for(h, w, max_batch_size)
    per_image = occlusion_inputs(x, plan)
    rows = plan.rows
    if rows <= max_batch_size:  # whole images per batch: each image's rows run together
        group = max_batch_size // rows
        chunks = [np.concatenate(per_image[i : i + group]) for i in range(0, n, group)]
    else:
        flat = np.concatenate(per_image)
        chunks = [flat[i : i + max_batch_size] for i in range(0, len(flat), max_batch_size)]
    results = await asyncio.gather(*(batcher.submit({input_name: c}, len(c), deadline) for c in chunks))
    probs_all = np.concatenate([_probabilities(r) for r in results])
    probs, classes, maps = occlusion_explain(
        [probs_all[i * rows : (i + 1) * rows] for i in range(n)], plan, req.class_indices, num_classes
    )
    return METHOD_OCCLUSION, probs, classes, maps, n * rows


async def render(
    x: np.ndarray,
    classes: np.ndarray,
    maps: np.ndarray,
    labels: list[str],
    metadata: ModelMetadata,
    req: ExplainRequest,
) -> list[list[Heatmap]]:
    pre = metadata.preprocessing

    def draw() -> list[list[Heatmap]]:
        return class_maps(
            x,
            classes,
            maps,
            labels,
            scale=pre.scale,
            mean=pre.mean,
            std=pre.std,
            overlay=req.overlay,
            overlay_size=req.overlay_size,
        )

    if req.overlay and classes.size > INLINE_OVERLAYS_MAX:
        return await asyncio.to_thread(draw)
    return draw()


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[list[Prediction]]:
    k = max(1, min(k or 1, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [Prediction(labels[j] if j < len(labels) else str(j), int(j), float(p[j])) for j in ids]
        for p, ids in zip(probs, order)
    ]


def _probabilities(result: dict[str, np.ndarray]) -> np.ndarray:
    if "probabilities" in result:
        p = result["probabilities"]
        return p.astype(np.float32).reshape(len(p), -1)
    logits = next(iter(result.values())).astype(np.float32)
    logits = logits.reshape(len(logits), -1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
