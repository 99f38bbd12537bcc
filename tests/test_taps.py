"""FeatureTaps: records by module path, ``:input``, repeated calls, hygiene, DDP."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

from kdforge.errors import ConfigError
from kdforge.taps import FeatureTaps, unwrap_model


class Net(nn.Module):
    """A tiny ResNet-like layout: stem, layer1..layer3 (with sub-blocks), fc; one unused."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        self.unused = nn.Linear(8, 8)  # never called in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class Twice(nn.Module):
    """Applies the same block twice in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.block(x)))


def _all_hooks(model: nn.Module) -> list:
    return [
        h
        for m in model.modules()
        for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())
    ]


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def test_outputs_equal_what_each_module_returns(net: Net) -> None:
    x = torch.randn(2, 3, 8, 8)
    taps = FeatureTaps(net, ["stem", "layer2", "layer3.0", "fc", ""])
    out = net(x)
    rec = taps.outputs
    assert list(rec) == ["stem", "layer2", "layer3.0", "fc", ""]
    stem = net.stem(x)
    layer2 = net.layer2(net.layer1(stem))
    torch.testing.assert_close(rec["stem"], stem, rtol=0, atol=0)
    torch.testing.assert_close(rec["layer2"], layer2, rtol=0, atol=0)
    torch.testing.assert_close(rec["layer3.0"], net.layer3[0](layer2), rtol=0, atol=0)
    assert rec["fc"] is out and rec[""] is out
    assert rec["layer2"].shape == (2, 8, 4, 4)


def test_input_suffix_records_the_module_input(net: Net) -> None:
    x = torch.randn(2, 3, 8, 8)
    taps = FeatureTaps(net, ["fc:input", "layer3", "stem:input"])
    net(x)
    rec = taps.outputs
    assert rec["stem:input"] is x
    pooled = torch.flatten(net.pool(rec["layer3"]), 1)
    torch.testing.assert_close(rec["fc:input"], pooled, rtol=0, atol=0)
    assert rec["fc:input"].shape == (2, 8)


def test_module_called_twice_records_both_calls_in_order() -> None:
    torch.manual_seed(0)
    model = Twice()
    x = torch.randn(3, 4)
    taps = FeatureTaps(model, ["block", "block:input", "head"])
    model(x)
    rec = taps.outputs
    first = model.block(x)
    second = model.block(first)
    assert isinstance(rec["block"], list) and len(rec["block"]) == 2
    torch.testing.assert_close(rec["block"][0], first, rtol=0, atol=0)
    torch.testing.assert_close(rec["block"][1], second, rtol=0, atol=0)
    assert rec["block:input"][0] is x
    torch.testing.assert_close(rec["block:input"][1], first, rtol=0, atol=0)
    assert isinstance(rec["head"], torch.Tensor)  # ran once: a tensor, not a list


def test_records_are_replaced_on_the_next_forward() -> None:
    torch.manual_seed(0)
    model = Twice()
    taps = FeatureTaps(model, ["block", "head"])
    model(torch.randn(3, 4))
    x2 = torch.randn(5, 4)
    out2 = model(x2)
    rec = taps.outputs
    assert len(rec["block"]) == 2  # not 4
    assert rec["block"][0].shape == (5, 4)
    torch.testing.assert_close(rec["block"][0], model.block(x2), rtol=0, atol=0)
    assert rec["head"] is out2


def test_duplicate_paths_are_tapped_once(net: Net) -> None:
    taps = FeatureTaps(net, ["layer1", "layer1"])
    net(torch.randn(1, 3, 8, 8))
    assert taps.paths == ["layer1"]
    assert isinstance(taps.outputs["layer1"], torch.Tensor)


def test_unknown_path_raises_a_config_error_naming_the_closest_paths(net: Net) -> None:
    with pytest.raises(ConfigError) as err:
        FeatureTaps(net, ["layer1", "layr3"])
    msg = err.value.args[0]
    assert "'layr3'" in msg and "Net" in msg
    suggestions = msg.split("closest valid paths:")[1]
    assert suggestions.lstrip().startswith("'layer3'")
    assert not _all_hooks(net)  # a failed construction leaves no hook behind


def test_unknown_input_path_raises_a_config_error(net: Net) -> None:
    with pytest.raises(ConfigError, match="fcc"):
        FeatureTaps(net, ["fcc:input"])


def test_ddp_prefix_is_not_accepted_as_a_path(net: Net) -> None:
    with pytest.raises(ConfigError):
        FeatureTaps(net, ["module.layer1"])


def test_remove_removes_every_hook(net: Net) -> None:
    assert not _all_hooks(net)
    taps = FeatureTaps(net, ["", "stem", "layer1.0", "layer3", "fc:input"])
    assert len(_all_hooks(net)) == 6  # 5 forward hooks + the root's clearing pre-hook
    net(torch.randn(1, 3, 8, 8))
    taps.remove()
    for module in net.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
    net(torch.randn(1, 3, 8, 8))
    with pytest.raises(RuntimeError):  # nothing recorded any more, and nothing kept
        taps.outputs  # noqa: B018


def test_context_manager_removes_every_hook(net: Net) -> None:
    x = torch.randn(1, 3, 8, 8)
    with FeatureTaps(net, ["layer2", "fc:input"]) as taps:
        assert _all_hooks(net)
        net(x)
        assert taps.outputs["layer2"].shape == (1, 8, 4, 4)
    for module in net.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks


def test_outputs_raise_when_a_tapped_module_did_not_run(net: Net) -> None:
    taps = FeatureTaps(net, ["layer1", "unused"])
    with pytest.raises(RuntimeError, match=r"no forward|did not run"):
        taps.outputs  # noqa: B018  (before any forward)
    net(torch.randn(1, 3, 8, 8))
    with pytest.raises(RuntimeError, match="unused"):
        taps.outputs  # noqa: B018


def test_clear_drops_records(net: Net) -> None:
    taps = FeatureTaps(net, ["layer1"])
    net(torch.randn(1, 3, 8, 8))
    taps.clear()
    with pytest.raises(RuntimeError):
        taps.outputs  # noqa: B018


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gloo_group():
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_works_through_distributed_data_parallel(net: Net, gloo_group: None) -> None:
    ddp = nn.parallel.DistributedDataParallel(net)
    assert unwrap_model(ddp) is net
    x = torch.randn(2, 3, 8, 8)
    taps = FeatureTaps(ddp, ["layer2", "fc:input"])  # paths without "module."
    assert taps.model is net
    out = ddp(x)
    rec = taps.outputs
    torch.testing.assert_close(rec["layer2"], net.layer2(net.layer1(net.stem(x))))
    torch.testing.assert_close(net.fc(rec["fc:input"]), out)
    with pytest.raises(ConfigError):
        FeatureTaps(ddp, ["module.layer2"])
    taps.remove()
    assert not _all_hooks(net)
