"""dvc.yaml cannot drift from the code: code deps cover each stage's import closure, the training stages'
params are the ones their checkpoint check uses, and the Prefect flow runs dvc.yaml's stages in graph order."""

import re

import pytest
import yaml

from cocosnet.deps import import_closure
from cocosnet.train.inputs import STAGES
from cocosnet.train.trainer import CORRESPONDENCE_KEYS
from tests.helpers import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
STUDY = yaml.safe_load((ROOT / "study/dvc.yaml").read_text())["stages"]  # the correspondence study's pipeline


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("pipeline", [DVC, STUDY], ids=["dvc.yaml", "study/dvc.yaml"])
def test_every_stage_depends_on_every_project_file_it_imports(pipeline):
    for name, stage in pipeline.items():
        module = re.search(r"python -m ([\w.]+)", stage["cmd"]).group(1)
        closure = [str(p) for p in import_closure(module)]
        assert f"{module.replace('.', '/')}.py" in closure
        missing = [p for p in closure if not covered(p, stage["deps"])]
        assert not missing, f"dvc.yaml stage {name!r} imports files it does not depend on: {missing}"
        for dep in stage["deps"]:
            if dep.startswith(("cocosnet", "stages", "pipelines")):
                assert (ROOT / dep).exists(), f"dvc.yaml stage {name!r} depends on missing code {dep}"


def test_a_modules_compiled_part_is_in_its_closure():
    closure = [str(p) for p in import_closure("cocosnet.models.patchmatch")]
    assert "cocosnet/models/kernels.py" in closure and "cocosnet/models/kernels.cpp" in closure


def test_the_study_pipeline_writes_only_under_study():
    for name, stage in STUDY.items():
        assert stage["wdir"] == ".."
        for out in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            path = next(iter(out)) if isinstance(out, dict) else out
            assert path.startswith("study/"), f"study/dvc.yaml stage {name!r} writes {path} outside study/"
        assert "--params study/params.yaml" in stage["cmd"]


def test_the_closure_follows_lazy_and_from_imports(tmp_path):
    pkg = tmp_path / "cocosnet"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cocosnet.sub import b\nimport os\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "sub" / "c.py").write_text("from cocosnet.sub.d import VALUE\n")
    (pkg / "sub" / "d.py").write_text("VALUE = 1\n")
    (pkg / "unused.py").write_text("")
    got = [str(p) for p in import_closure("cocosnet.a", tmp_path)]
    assert got == ["cocosnet/__init__.py", "cocosnet/a.py", "cocosnet/sub/__init__.py", "cocosnet/sub/b.py",
                   "cocosnet/sub/c.py", "cocosnet/sub/d.py"]


def test_training_stage_params_are_the_checkpoint_check_params():
    for name, spec in STAGES.items():
        assert tuple(DVC[name]["params"]) == spec.params
    assert tuple(STUDY["pretrain"]["params"][0]["study/params.yaml"]) == STAGES["pretrain"].params
    # every loss the pretraining uses is a param of its stage, so changing its weight reruns it
    assert {f"loss_weights.{k}" for k in CORRESPONDENCE_KEYS} <= set(STAGES["pretrain"].params)


def test_the_flow_runs_dvc_yaml_stages_in_graph_order():
    from cocosnet.flow import STAGES as FLOW_STAGES

    assert list(FLOW_STAGES) == list(DVC)
    producer = {}
    for name, stage in DVC.items():
        for out in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            producer[next(iter(out)) if isinstance(out, dict) else out] = name
    order = list(DVC)
    for name, stage in DVC.items():
        for dep in stage["deps"]:
            for out, maker in producer.items():
                if covered(dep, [out]) or covered(out, [dep]):
                    if maker != name:
                        assert order.index(maker) < order.index(name), f"{name} needs {dep} from {maker}"
