from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RawImage(_message.Message):
    __slots__ = ("pixels", "height", "width", "channels")
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    pixels: bytes
    height: int
    width: int
    channels: int
    def __init__(self, pixels: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "images", "top_k")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    images: _containers.RepeatedCompositeFieldContainer[Image]
    top_k: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., top_k: _Optional[int] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("label", "index", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    index: int
    probability: float
    def __init__(self, label: _Optional[str] = ..., index: _Optional[int] = ..., probability: _Optional[float] = ...) -> None: ...

class ImageClassification(_message.Message):
    __slots__ = ("top_k",)
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    top_k: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, top_k: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "results")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    results: _containers.RepeatedCompositeFieldContainer[ImageClassification]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ImageClassification, _Mapping]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "images", "top_k", "class_indices", "skip_overlay", "overlay_size")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDICES_FIELD_NUMBER: _ClassVar[int]
    SKIP_OVERLAY_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_SIZE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    images: _containers.RepeatedCompositeFieldContainer[Image]
    top_k: int
    class_indices: _containers.RepeatedScalarFieldContainer[int]
    skip_overlay: bool
    overlay_size: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., top_k: _Optional[int] = ..., class_indices: _Optional[_Iterable[int]] = ..., skip_overlay: _Optional[bool] = ..., overlay_size: _Optional[int] = ...) -> None: ...

class Heatmap(_message.Message):
    __slots__ = ("index", "label", "height", "width", "values", "overlay_png")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    height: int
    width: int
    values: _containers.RepeatedScalarFieldContainer[float]
    overlay_png: bytes
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ..., overlay_png: _Optional[bytes] = ...) -> None: ...

class ImageExplanation(_message.Message):
    __slots__ = ("top_k", "heatmaps")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    HEATMAPS_FIELD_NUMBER: _ClassVar[int]
    top_k: _containers.RepeatedCompositeFieldContainer[Prediction]
    heatmaps: _containers.RepeatedCompositeFieldContainer[Heatmap]
    def __init__(self, top_k: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., heatmaps: _Optional[_Iterable[_Union[Heatmap, _Mapping]]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "method", "results")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    method: str
    results: _containers.RepeatedCompositeFieldContainer[ImageExplanation]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., method: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ImageExplanation, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "versions", "labels", "input_shape", "color_mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    COLOR_MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    color_mode: str
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[str]] = ..., input_shape: _Optional[_Iterable[int]] = ..., color_mode: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    default_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ..., default_model: _Optional[str] = ...) -> None: ...
