"""Image preprocessing shared by training, export, `cnn inspect` and the server (no torch here).

Preprocessing        the typed description (spec.py), stored in checkpoints and model metadata
to_model_input       PIL image -> (C, H, W) model input row, as the description says (image.py)
normalise_digit      photo/scan of a handwritten digit -> MNIST-style 28x28 (digit.py)
"""

from preprocessing.spec import (
    COLOR_MODES,
    DIGIT_SIZE,
    INTERPOLATIONS,
    MODES,
    Preprocessing,
    PreprocessingError,
    for_dataset,
    is_digit_dataset,
    serving_preprocessing,
)

__all__ = [
    "COLOR_MODES",
    "DIGIT_SIZE",
    "INTERPOLATIONS",
    "MODES",
    "Preprocessing",
    "PreprocessingError",
    "for_dataset",
    "is_digit_dataset",
    "serving_preprocessing",
]
