"""`cnn.v1.Classification`: encoded images in, top-k labels out (protobuf <-> service, nothing more)."""

from __future__ import annotations

from protos.cnn import classification_pb2 as pb
from protos.cnn import classification_pb2_grpc as pb_grpc
from server.grpc.status import deadline_of, rpc
from server.metrics import Metrics
from server.service import ImageInput, InferenceService


class ClassificationServicer(pb_grpc.ClassificationServicer):
    def __init__(self, service: InferenceService, metrics: Metrics) -> None:
        self.service = service
        self.metrics = metrics

    @rpc("Classify", lambda r: r.model_name)
    async def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
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
        mv, results = await self.service.classify(request.model_name, request.model_version, images,
                                                  request.top_k, deadline_of(context))
        resp = pb.ClassifyResponse(model_name=mv.name, model_version=str(mv.version))
        for preds in results:
            c = resp.results.add()
            for p in preds:
                c.top_k.add(label=p.label, index=p.index, probability=p.probability)
        return resp

    @rpc("ListModels")
    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        resp = pb.ListModelsResponse()
        for name in self.service.manager.ready_models():
            mv = self.service.model(name)
            md = mv.runtime.metadata
            resp.models.add(name=name, versions=self.service.versions(name), labels=md.labels,
                            input_shape=list(mv.runtime.input.shape), color_mode=md.preprocessing.color_mode)
        try:
            resp.default_model = self.service.resolve_model_name("")
        except Exception:
            resp.default_model = ""
        return resp
