"""training/checkpoint.py: best.pt rebuilds the same network; last.pt restores a run exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from training import nets  # noqa: E402
from training.checkpoint import Checkpoint, RunState  # noqa: E402


def small_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return nets.build_model("mlp", hidden=(16,), dropout=0.0)


def test_a_checkpoint_rebuilds_the_same_network_from_its_own_description(tmp_path: Path) -> None:
    net = small_mlp().eval()
    checkpoint = Checkpoint.of(net, "mlp", {"name": "tiny"})
    with torch.no_grad():
        for parameter in net.parameters():  # training goes on: the snapshot must not change
            parameter.add_(1.0)
    checkpoint.save(tmp_path / "best.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # written atomically, nothing left beside
    loaded = Checkpoint.load(tmp_path)  # a run directory means its best.pt
    assert (loaded.arch, loaded.model_args["hidden"], loaded.info) == ("mlp", [16], {"name": "tiny"})
    x = torch.rand(4, 1, 28, 28) * 255
    with torch.no_grad():
        expected = Checkpoint.of(small_mlp(), "mlp", {}).build()(x)
        torch.testing.assert_close(loaded.build()(x), expected)


def test_loading_something_else_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"pass a run directory or its best\.pt"):
        Checkpoint.load(tmp_path / "nope.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"not a digits checkpoint \(missing 'arch'\)"):
        Checkpoint.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"not a last.pt written by `digits train` \(missing 'model'\)"):
        RunState.load(tmp_path / "other.pt")


def test_run_state_restores_weights_optimiser_schedule_and_random_streams(tmp_path: Path) -> None:
    def parts(net: torch.nn.Module) -> tuple:
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return optimizer, schedule, torch.Generator().manual_seed(1)

    net = small_mlp()
    optimizer, schedule, generator = parts(net)
    net(torch.rand(2, 1, 28, 28)).sum().backward()
    optimizer.step()
    schedule.step()
    torch.rand(3, generator=generator)
    RunState.capture(net, optimizer, schedule, generator, [{"epoch": 1}], {"val_acc": 0.5, "epoch": 1}, 1).save(
        tmp_path / "last.pt"
    )
    next_draw = torch.rand(3, generator=generator)

    again = nets.build_model("mlp", hidden=(16,), dropout=0.0)
    optimizer2, schedule2, generator2 = parts(again)
    state = RunState.load(tmp_path / "last.pt")
    state.restore(again, optimizer2, schedule2, generator2)
    assert (state.epoch, state.best, state.history) == (1, {"val_acc": 0.5, "epoch": 1}, [{"epoch": 1}])
    for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert schedule2.get_last_lr() == schedule.get_last_lr() == [0.005]
    torch.testing.assert_close(torch.rand(3, generator=generator2), next_draw)
