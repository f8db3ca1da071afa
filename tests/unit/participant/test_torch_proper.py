"""The PyTorch adapter done properly: named layout, buffers per job, train/eval modes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch extra is not installed")

from torch import nn  # noqa: E402

from trapdoor.ml.models import model_from_spec  # noqa: E402
from trapdoor.ml.spec import SpecError, check_model_spec  # noqa: E402
from trapdoor.ml.torch_adapter import TorchModel, register_torch_model  # noqa: E402
from trapdoor.ml.training import TrainingConfig, local_fit  # noqa: E402


def _dropout_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 3))


def _bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


register_torch_model("test-proper-dropout", _dropout_net)
register_torch_model("test-proper-bn", _bn_net)

BN_PARAMS = [("0.weight", (5, 4)), ("0.bias", (5,)), ("1.weight", (5,)), ("1.bias", (5,))]
BN_PARAMS_TAIL = [("3.weight", (3, 5)), ("3.bias", (3,))]
BN_STATS = [("1.running_mean", (5,)), ("1.running_var", (5,))]


def _data(rows: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.normal(size=(rows, 4)), rng.integers(0, 3, size=rows)


def test_layout_names_and_shapes_and_a_mismatch_names_the_tensor() -> None:
    model = TorchModel("torch-mlp", layer_sizes=[4, 3, 2])
    assert model.layout() == [
        ("0.weight", (3, 4)),
        ("0.bias", (3,)),
        ("2.weight", (2, 3)),
        ("2.bias", (2,)),
    ]
    model.check_layout(model.num_parameters)
    model.check_layout(model.layout())
    with pytest.raises(ValueError, match=r"got 16: it ends inside tensor '2\.weight' \(2, 3\)"):
        model.check_layout(16)
    with pytest.raises(ValueError, match=r"got 25: 2 values after the last tensor '2\.bias'"):
        model.from_vector(np.zeros(25))
    with pytest.raises(ValueError, match=r"tensor 2 differs: .*'2\.weight' \(3, 2\)"):
        model.check_layout([("0.weight", (3, 4)), ("0.bias", (3,)), ("2.weight", (3, 2))])
    with pytest.raises(ValueError, match=r"the job lacks tensor '2\.bias'"):
        model.check_layout(model.layout()[:3])


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("torch-mlp", {"layer_sizes": [5, 4, 3]}), ("torch-cnn", {"side": 6, "channels": 2})],
)
def test_built_in_vectors_are_those_of_parameters_to_vector(name: str, kwargs: dict) -> None:
    model = TorchModel(name, **kwargs)
    before = nn.utils.parameters_to_vector(model.module.parameters()).detach().numpy()
    assert np.array_equal(model.to_vector(), before)
    assert model.num_parameters == sum(p.numel() for p in model.module.parameters())
    params = model.init_parameters(np.random.default_rng(3))
    model.from_vector(params)
    assert np.array_equal(nn.utils.parameters_to_vector(model.module.parameters()).detach(), params)
    assert model.spec() == {"kind": "torch", "name": name, "kwargs": kwargs}


def test_dropout_is_off_when_predicting_and_on_when_training() -> None:
    model = TorchModel("test-proper-dropout")
    params = model.init_parameters(np.random.default_rng(0))
    X, y = _data()
    assert np.array_equal(model.predict_proba(params, X), model.predict_proba(params, X))
    torch.manual_seed(1)
    first = model.loss_and_gradient(params, X, y)[0]
    torch.manual_seed(2)
    assert first != model.loss_and_gradient(params, X, y)[0]
    assert model.module.training  # the previous mode is back


def test_the_previous_mode_is_restored_after_fitting() -> None:
    model = TorchModel("test-proper-dropout")
    model.module.eval()
    params = model.init_parameters(np.random.default_rng(0))
    model.loss_and_gradient(params, *_data())
    assert not any(m.training for m in model.module.modules())


def test_batchnorm_predicts_one_row_and_keeps_its_statistics_local_by_default() -> None:
    model = TorchModel("test-proper-bn")
    assert model.layout() == BN_PARAMS + BN_PARAMS_TAIL
    params = model.init_parameters(np.random.default_rng(0))
    X, y = _data()
    model.loss_and_gradient(params, X, y)  # train mode: the running stats move
    assert model.module[1].num_batches_tracked.item() == 1
    probs = model.predict_proba(params, X[:1])
    assert probs.shape == (1, 3) and np.isclose(probs.sum(), 1.0)


def test_federated_buffers_are_appended_and_round_trip() -> None:
    spec = {"kind": "torch", "name": "test-proper-bn", "kwargs": {}, "buffers": "federated"}
    model = model_from_spec(spec)
    assert model.spec() == spec
    assert model.layout() == BN_PARAMS + BN_PARAMS_TAIL + BN_STATS
    params = model.init_parameters(np.random.default_rng(0))
    assert np.array_equal(params[-10:], np.r_[np.zeros(5), np.ones(5)])  # fresh mean, var
    X, y = _data()
    _, grad = model.loss_and_gradient(params, X, y)
    assert grad.shape == params.shape and not grad[-10:].any()
    stats = np.r_[np.full(5, 0.25), np.full(5, 2.0)]
    released = np.r_[params[:-10], stats]
    model.from_vector(released)
    assert np.array_equal(model.module[1].running_var.numpy(), np.full(5, 2.0))
    assert np.array_equal(model.to_vector(), released)


@pytest.mark.parametrize("buffers", ["local", "federated"])
def test_a_released_vector_loads_strictly_into_the_users_module(buffers: str) -> None:
    model = TorchModel("test-proper-bn", buffers=buffers)
    released = model.init_parameters(np.random.default_rng(4)) + 0.5
    state = model.load_released(released)
    user_module = _bn_net().double()
    user_module.load_state_dict(state, strict=True)
    user_module.eval()
    X = _data()[0]
    with torch.no_grad():
        ours = torch.softmax(user_module(torch.as_tensor(X)), dim=1).numpy()
    assert np.allclose(ours, model.predict_proba(released, X))
    assert state["1.running_var"].equal(
        torch.full((5,), 1.5 if buffers == "federated" else 1.0, dtype=torch.float64)
    )


@pytest.mark.parametrize(("value", "malformed"), [("shared", False), (1, True)])
def test_an_unknown_buffer_mode_is_refused(value: object, malformed: bool) -> None:
    spec = {"kind": "torch", "name": "test-proper-bn", "buffers": value}
    with pytest.raises(SpecError, match=r"model\.buffers") as refused:
        check_model_spec(spec)
    assert refused.value.malformed is malformed
    with pytest.raises(ValueError, match="buffer"):
        TorchModel("test-proper-bn", buffers="shared")


@pytest.mark.parametrize("buffers", ["local", "federated"])
def test_local_fit_carries_federated_statistics_in_the_update(buffers: str) -> None:
    """Running statistics move in the forward pass: with ``"federated"`` the update holds
    that move (as the module itself saw it), with ``"local"`` they are not in the vector."""
    spec = {"kind": "torch", "name": "test-proper-bn", "kwargs": {}, "buffers": buffers}
    model = model_from_spec(spec)
    params = model.init_parameters(np.random.default_rng(0))
    X, y = _data()
    fit = local_fit(model, params, X, y, TrainingConfig(0.1, 1, len(y)), np.random.default_rng(1))
    if buffers == "local":
        assert fit.update.size == params.size and model.layout() == BN_PARAMS + BN_PARAMS_TAIL
        return
    bn = model.module[1]
    moved = np.r_[bn.running_mean.numpy(), bn.running_var.numpy()]
    np.testing.assert_array_equal(params[-10:] + fit.update[-10:], moved)
    assert np.abs(fit.update[-10:]).max() > 1e-3  # one batch of data did move them
