"""Model shapes and configuration."""

import pytest

torch = pytest.importorskip("torch")

from training import nets  # noqa: E402


@pytest.mark.parametrize("arch", ["mlp", "lenet5"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "leaky_relu"])
def test_output_shape_for_every_activation(arch: str, activation: str) -> None:
    net = nets.build_model(arch, activation=activation).eval()
    out = net(torch.rand(5, 1, 28, 28) * 255)
    assert out.shape == (5, 10)


def test_mlp_default_is_the_reference_784_256_256_256_10() -> None:
    net = nets.build_model("mlp")
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 256), (256, 256), (256, 256), (256, 10)]


def test_mlp_widths_batch_norm_and_dropout_are_configurable() -> None:
    net = nets.build_model("mlp", hidden=(64, 32), batch_norm=True, dropout=0.5)
    kinds = [type(m).__name__ for m in net.layers]
    assert kinds.count("BatchNorm1d") == 2 and kinds.count("Dropout") == 2
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("pooling,kind", [("avg", torch.nn.AvgPool2d), ("max", torch.nn.MaxPool2d)])
def test_lenet5_layers_follow_the_paper(pooling: str, kind: type) -> None:
    net = nets.build_model("lenet5", pooling=pooling)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 6, (5, 5), (2, 2)), (6, 16, (5, 5), (0, 0))]
    assert sum(isinstance(m, kind) for m in net.modules()) == 2
    linears = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert linears == [(400, 120), (120, 84), (84, 10)]


def test_normalisation_is_inside_the_model() -> None:
    norm = nets.Normalize(0.1307, 0.3081)
    x = torch.tensor([0.0, 255.0])
    expected = (x / 255 - 0.1307) / 0.3081
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_model_args_rebuild_the_same_architecture() -> None:
    net = nets.build_model("mlp", hidden=(32, 16), activation="tanh")
    again = nets.build_model("mlp", **nets.model_args(net))
    again.load_state_dict(net.state_dict())
    x = torch.rand(2, 1, 28, 28) * 255
    assert torch.equal(net.eval()(x), again.eval()(x))


@pytest.mark.parametrize("bad", [{"activation": "swish"}, {"dropout": 1.5}, {"hidden": ()}])
def test_bad_configuration_is_refused_with_a_clear_message(bad: dict) -> None:
    with pytest.raises(ValueError, match=r"activation|dropout|hidden"):
        nets.build_model("mlp", **bad)


def test_unknown_architecture_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="lenet5"):
        nets.build_model("resnet")
