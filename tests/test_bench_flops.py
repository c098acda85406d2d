"""cocosnet/measure/flops.py (bench/flops.py): the FLOP count it builds its floors on, the rates, and which
measured time it compares."""

import json

import pytest
import torch
from torch import nn

import cocosnet.measure.flops as flops


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.second = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


FORWARD = 2 * (3 * 8 * 9 + 8 * 4) * 16 * 16  # multiply-adds of both convolutions at 16^2, times 2


def test_forward_flops_are_counted_exactly_and_split_by_module():
    net, x = TwoConvs(), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        gflop, split = flops.counted(lambda: net(x), split=True)
    assert gflop * 1e9 == pytest.approx(FORWARD)
    assert split == {"first": round(2 * 3 * 8 * 9 * 256 / 1e9, 1), "second": round(2 * 8 * 4 * 256 / 1e9, 1)}


def test_backward_adds_the_input_and_weight_gradients():
    net = TwoConvs()
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    gflop, split = flops.counted(lambda: net(x).sum().backward(), split=False)
    assert gflop * 1e9 == pytest.approx(3 * FORWARD) and split == {}


def test_the_best_rate_is_the_fastest_measured_shape():
    rates = flops.best_rate(repeats=1, shapes=((4, 4, 32, (3, 3)), (8, 8, 16, (1, 5))), gemm=64)
    assert set(rates["per_shape"]) == {"gemm", "conv 4->4 3x3 at 32^2", "conv 8->8 1x5 at 16^2"}
    assert all(r > 0 for r in rates["per_shape"].values()) and rates["best"] == max(rates["per_shape"].values())


def test_measured_times_come_from_the_matching_records(tmp_path):
    bench = tmp_path / "reports" / "bench"
    bench.mkdir(parents=True)
    level = {"kind": "patchmatch", "size": 512, "device": "cpu", "forward_backward_s": 9.0}
    (bench / "correspondence.json").write_text(json.dumps({"records": [
        {**level, "cpu_kernels": False, "forward_backward_s": 26.0}, {**level, "cpu_kernels": True},
        {**level, "kind": "search", "cpu_kernels": True}]}))
    run = {"profile": "paper", "batch": 1, "amp": "off", "device": "cpu"}
    (bench / "matcher.json").write_text(json.dumps({"records": [
        {**run, "mode": "train", "size": 512, "seconds": 98.0}, {**run, "mode": "infer", "size": 1024, "seconds": 95.0},
        {**run, "mode": "infer", "size": 1024, "batch": 4, "seconds": 300.0}]}))
    assert flops.measured("level", 512, "paper", tmp_path) == 9.0
    assert flops.measured("train", 512, "paper", tmp_path) == 98.0
    assert flops.measured("infer", 1024, "paper", tmp_path) == 95.0
    assert flops.measured("infer", 512, "paper", tmp_path) is None and flops.measured("train", 512, "demo", tmp_path) is None
