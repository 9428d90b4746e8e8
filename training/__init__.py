"""Training side of the stack: datasets, augmentation, model zoo, recipes, loop, checkpoints.

torch lives here and nowhere on the serving path. The CLI entry points (``training.cli``) import
torch lazily so that ``cnn serve`` works on a torch-free install.

    data.py        datasets as in-memory uint8 tensors (N, C, H, W)
    augment.py     batched augmentation + normalisation on whole minibatches
    models/        the model zoo: register_model / create_model / list_models
    config.py      TrainConfig (the recipe), recipe files, --set overrides
    loop.py        train_one_epoch / evaluate / fit
    distributed.py data-parallel training under torchrun (DDP; gloo on CPU, NCCL on CUDA)
    checkpoint.py  self-describing checkpoints: save / load / build_model
    report.py      curves, confusion matrix, feature-map grids (PNG)
    inspect.py     feature maps of every convolution stage for one image
    cli.py         `cnn train` and `cnn inspect`
"""
