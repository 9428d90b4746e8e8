"""The model zoo: registry, shapes for 1- and 3-channel inputs, gradients, optimisation, options, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.models import create_model, list_models, model_arguments, register_model, resolved_arguments
from training.models.common import ACTIVATIONS

REQUIRED = [
    "lenet5",
    "alexnet",
    "vgg11",
    "vgg11_bn",
    "vgg16",
    "vgg16_bn",
    "googlenet",
    "resnet18",
    "resnet20",
    "mobilenet_v1",
    "mobilenet_v2",
]


def test_registry_holds_the_required_models():
    assert set(REQUIRED) <= set(list_models())
    assert list_models() == sorted(list_models())


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as e:
        create_model("nope")
    msg = str(e.value)
    assert "nope" in msg
    for name in REQUIRED:
        assert name in msg


def test_unknown_argument_is_named():
    with pytest.raises(ValueError, match="'colour'.*accepts: num_classes"):
        create_model("lenet5", colour=True)


def test_register_model_rejects_duplicates():
    def lenet5(**kwargs):
        return None

    with pytest.raises(RuntimeError, match="twice"):
        register_model(lenet5)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("channels,size,classes", [(1, 28, 10), (3, 32, 7)])
def test_forward_shape(name, channels, size, classes):
    torch.manual_seed(0)
    m = create_model(name, num_classes=classes, in_channels=channels, input_size=size).eval()
    with torch.no_grad():
        y = m(torch.randn(3, channels, size, size))  # (B, C, H, W) -> (B, classes)
    assert y.shape == (3, classes)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    m = create_model(name, num_classes=5, in_channels=1, input_size=12).train()
    x, y = torch.randn(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(m(x), y).backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{name}.{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", list_models())
def test_a_few_steps_reduce_the_loss(name):
    torch.manual_seed(0)
    kwargs = {"dropout": 0.0} if "dropout" in model_arguments(name) else {}
    m = create_model(name, num_classes=4, in_channels=3, input_size=12, **kwargs).train()
    x, y = torch.randn(8, 3, 12, 12), torch.arange(8) % 4
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_lenet5_is_the_1998_layout():
    m = create_model("lenet5", num_classes=10, in_channels=1, input_size=28)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 6, (5, 5), (2, 2)),
        (6, 16, (5, 5), (0, 0)),
    ]
    fcs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(400, 120), (120, 84), (84, 10)]
    assert sum(p.numel() for p in m.parameters()) == 61706
    m32 = create_model("lenet5", num_classes=10, in_channels=1, input_size=32)
    assert [mod.padding for mod in m32.modules() if isinstance(mod, torch.nn.Conv2d)][0] == (0, 0)


def test_resnet20_matches_the_paper_size():
    m = create_model("resnet20", num_classes=10, in_channels=3, input_size=32)
    n = sum(p.numel() for p in m.parameters())
    assert 0.26e6 < n < 0.28e6  # He et al.: 0.27 M


def test_mobilenets_use_depthwise_convolutions():
    for name in ("mobilenet_v1", "mobilenet_v2"):
        m = create_model(name, num_classes=10, in_channels=1, input_size=28)
        dw = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.groups == c.in_channels > 1]
        assert len(dw) >= 13, name


def test_batch_norm_switch_and_options():
    with_bn = create_model("lenet5", batch_norm=True)
    without = create_model("lenet5", batch_norm=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in without.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in create_model("vgg11", input_size=32).modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in create_model("vgg11_bn", input_size=32).modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in create_model("resnet20", batch_norm=False).modules())
    avg = create_model("lenet5", pool="avg")
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in avg.modules())
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in avg.modules())
    drop = create_model("alexnet", input_size=32, dropout=0.3)
    assert [m.p for m in drop.modules() if isinstance(m, torch.nn.Dropout)] == [0.3, 0.3]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activations(activation):
    m = create_model("lenet5", activation=activation).eval()
    kinds = {type(mod).__name__ for mod in m.modules()}
    expected = {
        "relu": "ReLU",
        "relu6": "ReLU6",
        "leaky_relu": "LeakyReLU",
        "elu": "ELU",
        "tanh": "Tanh",
        "sigmoid": "Sigmoid",
    }[activation]
    assert expected in kinds
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="activation"):
        create_model("lenet5", activation="swish")
    with pytest.raises(ValueError, match="pool"):
        create_model("vgg11", pool="median")
    with pytest.raises(ValueError, match="dropout"):
        create_model("resnet20", dropout=1.5)
    with pytest.raises(ValueError, match="input_size"):
        create_model("resnet20", input_size=4)


def test_small_input_adaptations():
    # CIFAR-style stems keep resolution on small inputs; ImageNet stems on large ones.
    small = create_model("resnet18", input_size=32)
    large = create_model("resnet18", input_size=224)
    assert small.stem[0].stride == (1, 1) and small.stem[0].kernel_size == (3, 3)
    assert large.stem[0][0].stride == (2, 2) and large.stem[0][0].kernel_size == (7, 7)
    assert create_model("mobilenet_v2", input_size=28).stem[0].stride == (1, 1)
    assert create_model("mobilenet_v2", input_size=224).stem[0].stride == (2, 2)


def _final_map(name: str, size: int, **kw) -> tuple[int, int]:
    m = create_model(name, in_channels=1, input_size=size, width_mult=0.25, **kw).eval()
    seen = {}
    (m.last if name == "mobilenet_v2" else m.blocks).register_forward_hook(
        lambda mod, inp, out: seen.update(shape=tuple(out.shape[2:]))
    )
    with torch.no_grad():
        m(torch.zeros(1, 1, size, size))
    return seen["shape"]


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_mobilenets_stop_downsampling_at_min_feature_size(name):
    assert _final_map(name, 28) == (4, 4)  # 28 -> 14 -> 7 -> 4, the last stride-2 stage keeps 4x4
    assert _final_map(name, 32) == (4, 4)
    assert _final_map(name, 224) == (7, 7)  # the paper's strides: total stride 32
    assert _final_map(name, 28, min_feature_size=1) == (2, 2)  # every stride-2 stage downsamples
    with pytest.raises(ValueError, match="min_feature_size"):
        create_model(name, min_feature_size=0)


# Every model was checked this way by hand; the suite keeps the plain net and the one with the unusual
# ops (ResNet-20's option-A shortcut: strided slicing + channel padding) to stay fast.
@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_exports_to_onnx_with_dynamic_batch(name, tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    m = create_model(name, num_classes=10, in_channels=1, input_size=28).eval()
    prog = torch.onnx.export(
        m,
        (torch.randn(2, 1, 28, 28),),
        dynamo=True,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    prog.save(str(tmp_path / "m.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 28, 28)
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = m(x).numpy()
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_resolved_arguments_fill_in_defaults():
    args = resolved_arguments("mobilenet_v2", num_classes=3, width_mult=0.5)
    assert args["num_classes"] == 3 and args["width_mult"] == 0.5
    assert args["min_feature_size"] == 4 and args["activation"] == "relu6"  # defaults recorded
    assert set(args) == set(model_arguments("mobilenet_v2"))
    assert create_model("mobilenet_v2", **args).fc.out_features == 3  # rebuilds from them alone
    with pytest.raises(ValueError, match="width"):
        resolved_arguments("mobilenet_v2", widht_mult=0.5)
