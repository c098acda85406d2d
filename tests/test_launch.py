"""`launch:` in params.yaml: the training stages start torchrun themselves for more than one process."""

import dataclasses

import pytest

from cocosnet.config import ConfigError, config_from_dict, load_config
from cocosnet.train.launch import torchrun_command, wants_torchrun
from tests.helpers import ROOT, tiny_params


def test_one_process_runs_in_place_and_more_start_torchrun(monkeypatch):
    launch = load_config(ROOT / "params.yaml").launch
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (launch.nproc_per_node, launch.nnodes) == (1, 1) and not wants_torchrun(launch)
    two = dataclasses.replace(launch, nproc_per_node=2)
    assert wants_torchrun(two)
    monkeypatch.setenv("WORLD_SIZE", "2")  # a process torchrun started does not start it again
    assert not wants_torchrun(two)


def test_the_torchrun_command_is_standalone_on_one_node_and_a_rendezvous_across_nodes():
    launch = dataclasses.replace(load_config(ROOT / "params.yaml").launch, nproc_per_node=4)
    cmd = torchrun_command(launch, "stages.train", ["--out", "m.pt"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc_per_node=4", "--nnodes=1", "--standalone",
                       "-m", "stages.train", "--out", "m.pt"]
    nodes = dataclasses.replace(launch, nnodes=2, rdzv_endpoint="node0:29400", rdzv_id="job7")
    cmd = torchrun_command(nodes, "stages.pretrain", [])
    assert "--standalone" not in cmd and "--nnodes=2" in cmd
    assert ["--rdzv_backend=c10d", "--rdzv_endpoint=node0:29400", "--rdzv_id=job7"] == cmd[5:8]


def test_bad_launch_settings_name_the_key(tmp_path):
    raw = tiny_params(tmp_path, tmp_path)
    raw["launch"]["nnodes"] = 2
    with pytest.raises(ConfigError, match="launch.rdzv_endpoint"):
        config_from_dict(raw)
    raw["launch"].update(nnodes=1, nproc_per_node=3)
    with pytest.raises(ConfigError, match=r"pretrain.batch_size \(2\) must divide by the number of training processes \(3"):
        config_from_dict(raw)
    raw["launch"].update(nproc_per_node=0)
    with pytest.raises(ConfigError, match="launch.nproc_per_node"):
        config_from_dict(raw)
