"""`cnn explain`: ask the server where the evidence for a class lies, and write the overlays.

The client call is `ExplainClient.explain` (cnn.v1.Classification/Explain); each image comes back with
its top-k and one heatmap per explained class: H x W floats over the model input (after the server's
preprocessing) and a PNG of that input with the map over it. `cnn explain IMAGE... --out DIR` writes
`DIR/<image stem>.<class index>-<label>.png` per map (and, with --save-maps, the numbers as `.npy`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from client.classify import ClassificationClient, Prediction
from protos.cnn import classification_pb2 as pb


@dataclass(frozen=True)
class Heatmap:
    index: int  # the class explained
    label: str
    values: np.ndarray  # (H, W) float32 over the model input
    overlay_png: bytes  # empty when the request asked for no overlay


@dataclass(frozen=True)
class Explanation:
    top_k: list[Prediction]
    heatmaps: list[Heatmap]


class ExplainClient(ClassificationClient):
    """ClassificationClient plus `explain`; `last_method` is the method the server used ("cam"/"occlusion")."""

    last_method = ""

    def explain(
        self,
        images: list[bytes],
        top_k: int = 3,
        classes: list[int] | None = None,
        model: str = "",
        version: str = "",
        overlay: bool = True,
        overlay_size: int = 0,
    ) -> list[Explanation]:
        """Encoded images -> per image, the top-k and a heatmap per class in `classes` (default: its top-1)."""
        req = pb.ExplainRequest(
            model_name=model,
            model_version=version,
            top_k=top_k,
            class_indices=classes or [],
            skip_overlay=not overlay,
            overlay_size=overlay_size,
            images=[pb.Image(encoded=b) for b in images],
        )
        resp = self._call(self._stub.Explain, req)
        self.last_model = (resp.model_name, resp.model_version)
        self.last_method = resp.method
        return [
            Explanation(
                [Prediction(p.label, p.index, p.probability) for p in r.top_k],
                [
                    Heatmap(
                        h.index, h.label, np.asarray(h.values, np.float32).reshape(h.height, h.width), h.overlay_png
                    )
                    for h in r.heatmaps
                ],
            )
            for r in resp.results
        ]


def add_explain_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "explain",
        help="show where the evidence for a class lies (heatmap overlays)",
        description="Send PNG/JPEG files to the server's Explain call and write, per image and "
        "explained class, the preprocessed input with a heatmap over it "
        "(class activation maps or occlusion sensitivity, as the model's metadata says).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the overlays (created if missing)")
    p.add_argument("--server", default="127.0.0.1:8001", help="gRPC address (default 127.0.0.1:8001)")
    p.add_argument("--model", default="", help="model name (default: the server's default model)")
    p.add_argument("--version", default="", help="model version (default: the newest ready one)")
    p.add_argument("--top-k", type=int, default=3, help="how many labels per image (default 3)")
    p.add_argument(
        "--class",
        dest="classes",
        type=int,
        action="append",
        metavar="INDEX",
        help="explain this class index (repeatable; default: each image's most probable class)",
    )
    p.add_argument(
        "--overlay-size",
        type=int,
        default=224,
        help="longer side of the overlays in pixels (default 224; 0: the model input's own size, e.g. 28x28)",
    )
    p.add_argument("--save-maps", action="store_true", help="also write each heatmap as float32 .npy (H x W)")
    p.add_argument("--batch-size", type=int, default=16, help="images per request (default 16)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-request deadline in seconds")
    p.add_argument("--token", default=os.environ.get("CNN_TOKEN", ""), help="bearer token (default: $CNN_TOKEN)")
    p.add_argument("--tls-ca", metavar="PEM", help="use TLS, trusting this CA (PEM file)")
    p.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per image: {"image", "method", "top_k", "heatmaps": [{"index", "label", "overlay"}]}',
    )
    p.set_defaults(func=run_explain)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "class"


def output_name(image: Path, index: int, label: str, taken: set[str]) -> str:
    """`<stem>.<index>-<label>.png`, made unique when two inputs share a stem."""
    base = f"{_safe(image.stem)}.{index}-{_safe(label)}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}.{n}"
    taken.add(name)
    return name


def run_explain(args) -> int:
    def fail(msg: str) -> int:
        print(f"cnn explain: {msg}", file=sys.stderr)
        return 2

    if args.top_k < 1:
        return fail("--top-k must be at least 1")
    if any(c < 0 for c in args.classes or []):
        return fail("--class must be a class index >= 0")
    if not 0 <= args.overlay_size <= 2048:
        return fail("--overlay-size must be in 0..2048")
    paths = [Path(p) for p in args.images]
    data = []
    for p in paths:
        try:
            data.append(p.read_bytes())
        except OSError as e:
            return fail(f"cannot read {p}: {e.strerror}")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return fail(f"cannot create --out {out}: {e.strerror}")
    tls = {}
    if args.tls_ca:
        try:
            tls["tls_ca"] = Path(args.tls_ca).read_bytes()
        except OSError as e:
            return fail(f"cannot read --tls-ca {args.tls_ca}: {e.strerror}")
    taken: set[str] = set()
    try:
        with ExplainClient(args.server, timeout_s=args.timeout_s, token=args.token, **tls) as c:
            step = max(1, args.batch_size)
            for start in range(0, len(data), step):
                results = c.explain(
                    data[start : start + step],
                    top_k=args.top_k,
                    classes=args.classes,
                    model=args.model,
                    version=args.version,
                    overlay_size=args.overlay_size,
                )
                for path, r in zip(paths[start : start + step], results):
                    written = []
                    for h in r.heatmaps:
                        name = output_name(path, h.index, h.label, taken)
                        (out / f"{name}.png").write_bytes(h.overlay_png)
                        if args.save_maps:
                            np.save(out / f"{name}.npy", h.values)
                        written.append((h, out / f"{name}.png"))
                    if args.json:
                        print(
                            json.dumps(
                                {
                                    "image": str(path),
                                    "model": c.last_model[0],
                                    "version": c.last_model[1],
                                    "method": c.last_method,
                                    "top_k": [
                                        {"label": p.label, "index": p.index, "probability": round(p.probability, 6)}
                                        for p in r.top_k
                                    ],
                                    "heatmaps": [
                                        {
                                            "index": h.index,
                                            "label": h.label,
                                            "overlay": str(f),
                                            "height": int(h.values.shape[0]),
                                            "width": int(h.values.shape[1]),
                                        }
                                        for h, f in written
                                    ],
                                }
                            )
                        )
                    else:
                        best = ", ".join(f"{p.label} ({p.probability:.3f})" for p in r.top_k)
                        files = ", ".join(str(f) for _, f in written)
                        print(f"{path}: {best} [{c.last_method}] -> {files}")
    except grpc.RpcError as e:
        print(f"cnn explain: {args.server}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except OSError as e:
        return fail(f"cannot write into {out}: {e.strerror}")
    return 0
