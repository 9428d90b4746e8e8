"""`cnn.v1.Classification`: encoded images in, top-k labels out (protobuf <-> core types, nothing more)."""

from __future__ import annotations

from protos.cnn import classification_pb2 as pb
from protos.cnn import classification_pb2_grpc as pb_grpc
from server.core.service import InferenceService
from server.core.types import ClassifyRequest, ImageInput
from server.grpc.status import deadline_of, rpc
from server.metrics import Metrics


def decode_classify(request: pb.ClassifyRequest, deadline: float | None) -> ClassifyRequest:
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
    return ClassifyRequest(request.model_name, request.model_version, images, request.top_k, deadline)


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

    @rpc("ListModels")
    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        resp = pb.ListModelsResponse(default_model=self.service.default_model_name())
        for m in self.service.list_models():
            resp.models.add(
                name=m.name, versions=m.versions, labels=m.labels, input_shape=m.input_shape, color_mode=m.color_mode
            )
        return resp
