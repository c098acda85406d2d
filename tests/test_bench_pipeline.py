"""cocosnet/measure/pipeline.py (bench/pipeline.py): stage times from DVC's output, failures with the
output's tail, and the demo checks."""

import pytest

from cocosnet.measure.pipeline import demo_checks, timed_make


def write_makefile(folder, recipe: str) -> None:
    (folder / "Makefile").write_text(f"all:\n\t{recipe}\n")


def test_stage_times_are_split_at_the_running_stage_lines(tmp_path):
    write_makefile(tmp_path, """@echo "Stage 'synthesize' didn't change, skipping"; """
                             """echo "Running stage 'pretrain':"; echo '> python -m stages.pretrain'; """
                             """echo "Running stage 'train':"; echo done""")
    total, stages = timed_make("all", tmp_path, {"PATH": "/usr/bin:/bin"})
    assert list(stages) == ["pretrain", "train"]  # skipped stages are not timed
    assert all(s >= 0 for s in stages.values()) and sum(stages.values()) <= total


def test_a_failed_make_raises_with_its_output(tmp_path):
    write_makefile(tmp_path, "@echo 'the last words'; exit 3")
    with pytest.raises(RuntimeError, match="(?s)exit 2.*the last words"):
        timed_make("all", tmp_path, {"PATH": "/usr/bin:/bin"})


def metrics(trained_epe: list[float], model_l1: float) -> dict:
    identity = [1.0, 2.0, 4.0]
    return {"correspondence": {"per_level": {
                "trained": {str(i): {"epe_px": e} for i, e in enumerate(trained_epe)},
                "identity": {str(i): {"epe_px": e} for i, e in enumerate(identity)}}},
            "paired": {"l1": {"model": model_l1, "finest_warp": 0.045, "copy_exemplar": 0.05}}}


def test_the_demo_checks_read_every_level_and_the_l1():
    good = demo_checks(metrics([0.5, 1.0, 2.0], 0.04))
    assert good["correspondence_beats_identity_every_level"] and good["output_beats_copy_on_l1"]
    assert good["output_beats_finest_warp_on_l1"] and good["l1"]["finest_warp"] == 0.045
    assert good["epe_px"] == {"trained": [0.5, 1.0, 2.0], "identity": [1.0, 2.0, 4.0]}
    one_level_worse = demo_checks(metrics([0.5, 2.5, 2.0], 0.06))
    assert not one_level_worse["correspondence_beats_identity_every_level"]
    assert not one_level_worse["output_beats_copy_on_l1"]
    assert not one_level_worse["output_beats_finest_warp_on_l1"]
