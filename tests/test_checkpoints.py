"""Checkpoints: resumed only for the same inputs, never lost, checked on load; failures name their file."""

import dataclasses
import errno
import json
import os
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from cocosnet.data.dataset import PairDataset
from cocosnet.data.processing import image_file, label_file
from cocosnet.errors import CheckpointError, DataError, StageLocked, StorageError
from cocosnet.stage_run import lock_name, one_line, stage_lock
from cocosnet.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from cocosnet.train.inputs import STAGES, behaviour_sha256
from cocosnet.train.loop import RunPaths, run_training
from cocosnet.train.resume import REASON, superseded_dir
from tests.helpers import CPU, ROOT, prepare_data, state, tiny_training_config


@pytest.fixture(scope="module")
def data(tiny_raw, tmp_path_factory):
    processed = tmp_path_factory.mktemp("processed")
    prepare_data(tiny_raw, processed)
    return tiny_raw, processed


def config(data, steps=2, **pretrain):
    raw, processed = data
    cfg = tiny_training_config(raw, processed, crop=32)
    return dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, steps=steps, **pretrain))


def run(cfg, stage, out, *, table=None, init=None):
    table = pd.read_parquet(f"{cfg.data.processed}/pairs.parquet") if table is None else table
    paths = RunPaths(ckpt_dir=out / "ckpt", out_model=out / "model.pt", reports=out / "reports", init=init)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, model = run_training(cfg, STAGES[stage], table, paths, info=CPU, show_progress=False)
    return model, [str(w.message) for w in caught]


def superseded(out):
    assert not (out / "ckpt" / "superseded").exists()  # nothing but resumable checkpoints in the tracked folder
    return sorted(superseded_dir(out / "ckpt").glob("*/" + REASON))


def test_a_new_init_model_retrains_instead_of_resuming(data, tmp_path):
    cfg = tiny_training_config(*data)  # crop 64: the discriminator needs it
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, steps=1),
                              train=dataclasses.replace(cfg.train, steps=1))
    run(cfg, "pretrain", tmp_path / "pre_a")
    other = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, seed=9))
    run(other, "pretrain", tmp_path / "pre_b")
    first, _ = run(cfg, "train", tmp_path / "gan", init=tmp_path / "pre_a" / "model.pt")
    before = (tmp_path / "gan" / "model.pt").read_bytes()
    second, messages = run(cfg, "train", tmp_path / "gan", init=tmp_path / "pre_b" / "model.pt")
    assert any("the init file changed" in m and "starts afresh" in m for m in messages), messages
    assert (tmp_path / "gan" / "model.pt").read_bytes() != before
    assert any(not torch.equal(a, b) for a, b in zip(state(first).values(), state(second).values()))
    [reason] = superseded(tmp_path / "gan")
    assert list_checkpoints(reason.parent) and "the init file changed" in reason.read_text()


def test_new_training_pairs_or_changed_cached_data_retrain(data, tmp_path):
    cfg = config(data)
    table = pd.read_parquet(data[1] / "pairs.parquet")
    run(cfg, "pretrain", tmp_path)
    _, messages = run(cfg, "pretrain", tmp_path, table=table.iloc[1:])
    assert any("the training pairs changed" in m for m in messages), messages
    assert len(superseded(tmp_path)) == 1
    # Same pairs, but one cached label changed on disk.
    processed = tmp_path / "processed"
    subprocess.run(["cp", "-r", str(data[1]), str(processed)], check=True)
    moved = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, processed=str(processed)))
    run(moved, "pretrain", tmp_path / "b")
    rel = table[(table["split"] == "train") & (table["kind"] == "self")].iloc[0]["target"]
    path = label_file(processed / "label", rel)
    with np.load(path) as z:
        label = z["label"].copy()
    label[0, 0, 0] ^= 1
    np.savez_compressed(path, label=label)
    _, messages = run(moved, "pretrain", tmp_path / "b")
    assert any("the cached images or labels changed" in m for m in messages), messages


def test_a_changed_param_keeps_the_old_checkpoints_and_switching_back_resumes_them(data, tmp_path):
    cfg = config(data)
    run(cfg, "pretrain", tmp_path)
    original = (tmp_path / "model.pt").read_bytes()
    names = [p.name for p in list_checkpoints(tmp_path / "ckpt")]
    faster = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, lr=1.0e-3))
    _, messages = run(faster, "pretrain", tmp_path)
    assert any("pretrain.lr" in m and "moved to" in m for m in messages), messages
    [reason] = superseded(tmp_path)
    assert [p.name for p in list_checkpoints(reason.parent)] == names
    _, messages = run(cfg, "pretrain", tmp_path)  # back to the first lr: its checkpoints come back
    assert any("resuming the checkpoints of these exact inputs" in m for m in messages), messages
    assert (tmp_path / "model.pt").read_bytes() == original
    assert len(superseded(tmp_path)) == 1  # the lr=1e-3 set, kept in its turn


def test_a_longer_schedule_continues_a_finished_run(data, tmp_path):
    run(config(data, steps=1), "pretrain", tmp_path)
    straight, _ = run(config(data, steps=2), "pretrain", tmp_path / "straight")
    resumed, messages = run(config(data, steps=2), "pretrain", tmp_path)
    assert not superseded(tmp_path) and not any("afresh" in m for m in messages)
    for key, value in state(straight).items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


def _flip_a_tensor_byte(path):
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def test_truncated_and_bit_flipped_checkpoints_are_named_and_the_previous_one_is_used(data, tmp_path):
    cfg = config(data, steps=2)
    straight, _ = run(config(data, steps=3), "pretrain", tmp_path / "straight")
    run(cfg, "pretrain", tmp_path)
    first, newest = list_checkpoints(tmp_path / "ckpt")
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(newest.read_bytes())
    _flip_a_tensor_byte(flipped)
    torch.load(flipped, weights_only=True)  # still unpickles: only the checksum can tell
    with pytest.raises(CheckpointError, match=r"flipped\.pt: checksum mismatch"):
        load_checkpoint(flipped)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"ckpt-00000002\.pt: unreadable, truncated or corrupt"):
        load_checkpoint(newest)
    resumed, messages = run(config(data, steps=3), "pretrain", tmp_path)
    assert any("ckpt-00000002.pt" in m and "trying the previous checkpoint" in m for m in messages), messages
    assert (tmp_path / "ckpt" / "ckpt-00000002.pt.corrupt").exists()
    for key, value in state(straight).items():  # resumed from step 1, it ends where a straight run does
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_a_full_disk_during_a_checkpoint_write_names_the_file_and_keeps_the_previous(tmp_path, monkeypatch):
    good = save_checkpoint(tmp_path / "ckpt-00000001.pt", {"step": 1, "model": {"w": torch.ones(3)}})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("cocosnet.io.os.fsync", full)
    with pytest.raises(StorageError, match=r"ckpt-00000002\.pt: no space left on the device"):
        save_checkpoint(tmp_path / "ckpt-00000002.pt", {"step": 2, "model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]
    assert torch.equal(load_checkpoint(good)["model"]["w"], torch.ones(3))


@pytest.mark.parametrize("kind", ["image", "label"])
def test_a_truncated_cache_file_is_named_with_what_to_do(data, tmp_path, kind):
    processed = tmp_path / "processed"
    subprocess.run(["cp", "-r", str(data[1]), str(processed)], check=True)
    table = pd.read_parquet(processed / "pairs.parquet")
    rel = table.iloc[0]["target"]
    path = image_file(processed / "img", rel) if kind == "image" else label_file(processed / "label", rel)
    path.write_bytes(path.read_bytes()[:200])
    dataset = PairDataset(table, processed, load_size=72, crop_size=32, random_crop=False)
    stage = "prepare" if kind == "image" else "render_keypoints"
    with pytest.raises(DataError, match=rf"{path.name}: corrupt or truncated cached {kind}.*--single-item {stage}"):
        dataset[0]


def test_the_same_stage_of_another_params_file_takes_another_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert lock_name("pretrain", "params.yaml") == lock_name("pretrain", tmp_path / "params.yaml") == "pretrain"
    assert lock_name("pretrain", "study/params.yaml") == "pretrain@study_params"
    assert lock_name("pretrain", tmp_path / "study/params.yaml") == "pretrain@study_params"
    assert "/" not in lock_name("pretrain", "/elsewhere/my params.yaml")


def test_a_second_run_of_a_stage_is_refused_while_the_first_holds_the_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from cocosnet.stage_run import stage_lock\n"
        f"with stage_lock('evaluate', Path({str(tmp_path)!r})):\n    print('held', flush=True); time.sleep(60)\n")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StageLocked, match=r"evaluate\.lock: stage 'evaluate' is already running \(pid \d+\)"):
            with stage_lock("evaluate", tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with stage_lock("evaluate", tmp_path):  # a killed holder leaves no lock behind
        pass


def test_a_stage_cli_failure_is_one_line_with_the_file_and_exit_status_2(data, tmp_path):
    cfg = config(data)
    bad = tmp_path / "train.pt"
    bad.write_bytes(b"PK\x03\x04 not a checkpoint")
    params = tmp_path / "params.yaml"
    raw = dataclasses.asdict(cfg)
    params.write_text(json.dumps(raw))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    env.pop("COCOSNET_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "stages.evaluate", "--params", str(params), "--model", str(bad)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"error: {bad}: unreadable, truncated or corrupt") and "Traceback" not in proc.stderr
    debug = subprocess.run([sys.executable, "-m", "stages.evaluate", "--params", str(params), "--model", str(bad),
                            "--debug"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_two_runs_write_identical_bytes(data, tmp_path):
    cfg = config(data)
    for name in ("a", "b"):
        run(cfg, "pretrain", tmp_path / name)
    for rel in ["model.pt", "reports/losses.tsv", "reports/losses.png",
                *[f"ckpt/{p.name}" for p in list_checkpoints(tmp_path / "a" / "ckpt")]]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


class _Corrupt(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise DataError("/data/x.npz: corrupt or truncated cached label (BadZipFile: File is not a zip file)")


def test_an_error_from_a_dataloader_worker_is_still_one_line():
    with pytest.raises(DataError) as caught:
        next(iter(torch.utils.data.DataLoader(_Corrupt(), num_workers=1)))
    assert "Original Traceback" in str(caught.value)  # what the DataLoader wraps around it
    assert one_line(caught.value) == "/data/x.npz: corrupt or truncated cached label (BadZipFile: File is not a zip file)"


def test_code_is_identified_by_what_it_does_not_by_its_bytes(tmp_path):
    for name in ("cocosnet/train/trainer.py", "cocosnet/models/patchmatch.py"):
        source = (ROOT / name).read_text()
        commented = tmp_path / "commented.py"
        edited = source.replace('"""', '"""Edited: ', 1).replace('    """', '    """Edited too: ', 1)
        commented.write_text("# a comment\n" + edited.replace("\ndef ", "\n# a comment before a function\ndef ", 1)
                             + "\n\n# the end\n")
        assert commented.read_bytes() != (ROOT / name).read_bytes()
        assert behaviour_sha256(commented) == behaviour_sha256(ROOT / name), name
        changed = tmp_path / "changed.py"
        changed.write_text(source + "\nX = 1\n")
        assert behaviour_sha256(changed) != behaviour_sha256(ROOT / name), name


def test_a_run_resumes_across_a_code_change_only_when_asked(data, tmp_path, monkeypatch):
    from cocosnet.train import inputs as inputs_module

    cfg = config(data, steps=2)
    run(cfg, "pretrain", tmp_path)
    real = inputs_module.code_sha256
    monkeypatch.setattr(inputs_module, "code_sha256", lambda: {**real(), "cocosnet/train/trainer.py": "edited"})
    longer = config(data, steps=3)
    table = pd.read_parquet(f"{longer.data.processed}/pairs.parquet")
    paths = RunPaths(ckpt_dir=tmp_path / "ckpt", out_model=tmp_path / "model.pt", reports=tmp_path / "reports")
    tags = []
    with pytest.warns(UserWarning, match=r"across a change of the training code \(cocosnet/train/trainer\.py\)"):
        run_training(longer, STAGES["pretrain"], table, paths, info=CPU, show_progress=False, tag=tags.append,
                     across_code_change=True)
    state = load_checkpoint(list_checkpoints(tmp_path / "ckpt")[-1])
    assert state["step"] == 3 and state["code_changes"] == [{"step": 2, "files": ["cocosnet/train/trainer.py"]}]
    assert tags == [{"resumed_across_code_change": "step 2: cocosnet/train/trainer.py"}]
    monkeypatch.setattr(inputs_module, "code_sha256", real)  # back to the real code: a change again
    _, messages = run(config(data, steps=4), "pretrain", tmp_path)  # not asked: afresh, the set kept aside
    assert any("the training code changed (cocosnet/train/trainer.py)" in m and "starts afresh" in m
               for m in messages), messages


def test_a_comment_and_a_docstring_in_the_model_and_trainer_resume_the_finished_run(data, tmp_path, monkeypatch):
    """Issue 27's acceptance check in small: after a comment and a docstring are added to trainer.py and
    patchmatch.py, the finished run is resumed, not retrained, and the model file comes out byte-identical;
    a real change to the same file still starts afresh."""
    import functools
    import shutil

    from cocosnet.train import inputs as inputs_module

    cfg = config(data, steps=2)
    run(cfg, "pretrain", tmp_path)
    first = (tmp_path / "model.pt").read_bytes()
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "cocosnet", tree / "cocosnet", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("cocosnet/train/trainer.py", "cocosnet/models/patchmatch.py"):
        source = (tree / name).read_text()
        source = source.replace("\nclass ", '\n# A comment a reviewer asked for.\nclass ', 1)
        source = source.replace('\n    """', '\n    """A new first sentence. ', 1)
        (tree / name).write_text(source)
        assert (tree / name).read_bytes() != (ROOT / name).read_bytes()
    real = inputs_module.code_sha256
    monkeypatch.setattr(inputs_module, "code_sha256", functools.partial(real, root=tree))
    (tmp_path / "model.pt").unlink()
    _, messages = run(cfg, "pretrain", tmp_path)
    assert any("is at step 2, the step count asked for" in m for m in messages), messages
    assert not any("starts afresh" in m for m in messages), messages
    assert (tmp_path / "model.pt").read_bytes() == first
    with (tree / "cocosnet/models/patchmatch.py").open("a") as fh:
        fh.write("\nX = 1\n")
    _, messages = run(cfg, "pretrain", tmp_path)
    assert any("the training code changed (cocosnet/models/patchmatch.py)" in m and "starts afresh" in m
               for m in messages), messages
