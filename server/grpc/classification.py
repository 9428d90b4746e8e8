"""`cnn.v1.Classification`: encoded images in, top-k labels (Classify) and heatmaps (Explain) out
(protobuf <-> core types, nothing more)."""

from __future__ import annotations

from protos.cnn import classification_pb2 as pb
from protos.cnn import classification_pb2_grpc as pb_grpc
from server.core.service import InferenceService
from server.core.types import ClassifyRequest, ExplainRequest, ImageInput
from server.grpc.status import deadline_of, rpc
from server.metrics import Metrics


def decode_images(request: pb.ClassifyRequest | pb.ExplainRequest) -> list[ImageInput]:
    images = []
    for im in request.images:
        kind = im.WhichOneof("source")
        if kind == "encoded":
            images.append(ImageInput(encoded=im.encoded))
        elif kind == "raw":
            r = im.raw
            images.append(ImageInput(raw=(r.pixels, r.height, r.width, r.channels)))
        else:
            images.append(ImageInput())
    return images


def decode_classify(request: pb.ClassifyRequest, deadline: float | None) -> ClassifyRequest:
    return ClassifyRequest(request.model_name, request.model_version, decode_images(request), request.top_k, deadline)


def decode_explain(request: pb.ExplainRequest, deadline: float | None) -> ExplainRequest:
    return ExplainRequest(
        request.model_name,
        request.model_version,
        decode_images(request),
        request.top_k,
        list(request.class_indices),
        not request.skip_overlay,
        request.overlay_size,
        deadline,
    )


class ClassificationServicer(pb_grpc.ClassificationServicer):
    def __init__(self, service: InferenceService, metrics: Metrics) -> None:
        self.service = service
        self.metrics = metrics

    @rpc("Classify", lambda r: r.model_name)
    async def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        answer = await self.service.classify(decode_classify(request, deadline_of(context)))
        resp = pb.ClassifyResponse(model_name=answer.model_name, model_version=answer.model_version)
        for preds in answer.results:
            c = resp.results.add()
            for p in preds:
                c.top_k.add(label=p.label, index=p.index, probability=p.probability)
        return resp

    @rpc("Explain", lambda r: r.model_name)
    async def Explain(self, request: pb.ExplainRequest, context) -> pb.ExplainResponse:
        answer = await self.service.explain(decode_explain(request, deadline_of(context)))
        resp = pb.ExplainResponse(
            model_name=answer.model_name, model_version=answer.model_version, method=answer.method
        )
        for r in answer.results:
            e = resp.results.add()
            for p in r.top_k:
                e.top_k.add(label=p.label, index=p.index, probability=p.probability)
            for h in r.heatmaps:
                height, width = h.values.shape
                e.heatmaps.add(
                    index=h.index,
                    label=h.label,
                    height=height,
                    width=width,
                    values=h.values.ravel().tolist(),
                    overlay_png=h.overlay_png,
                )
        return resp

    @rpc("ListModels")
    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        resp = pb.ListModelsResponse(default_model=self.service.default_model_name())
        for m in self.service.list_models():
            resp.models.add(
                name=m.name, versions=m.versions, labels=m.labels, input_shape=m.input_shape, color_mode=m.color_mode
            )
        return resp
