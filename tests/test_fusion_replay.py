"""examples/fusion_replay.py: a recorded run's uploads fused again reproduce its FM."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "fusion_replay", Path(__file__).parents[1] / "examples" / "fusion_replay.py")
fusion_replay = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fusion_replay)

TINY = ["clients=2", "tasks=2", "rounds=2", "epochs=1", "threads=1", "seed=3",
        "public_labels=5", "cl=replay", "fusion_options={epochs=2}"]


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "uploads.pt"
    fusion_replay.main(["record", str(path), "--set", *TINY])
    return fusion_replay.load_recording(path)


def test_replay_as_recorded_reproduces_the_runs_foundation_model(recording):
    assert len(recording["rounds"]) == 4  # 2 tasks x 2 rounds, every client's upload
    assert all(len(uploads) == 2 for _, _, uploads in recording["rounds"])
    scores = fusion_replay.Replayer(recording).replay()
    run = recording["metrics"]["mean"]
    for model in ("fm", "fm_global"):
        assert scores[model]["average_accuracy"] == run[model]["average_accuracy"]
        assert scores[model]["average_forgetting"] == run[model]["average_forgetting"]


def test_replay_with_other_options_and_another_fusion(recording, capsys):
    replayer = fusion_replay.Replayer(recording)
    shared = replayer.replay(options={"personalise": False})
    assert shared["fm"] == shared["fm_global"]  # every client gets the global part
    alone = replayer.replay("fm-only")
    assert alone["fm"] == alone["fm_global"]
    assert alone != replayer.replay()  # the labels alone give another FM
    # replays do not leak into each other: the first one again gives the same numbers
    assert replayer.replay(options={"personalise": False}) == shared


def test_a_file_that_is_not_a_recording_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        fusion_replay.main(["replay", str(tmp_path / "missing.pt")])
    assert "file not found" in str(stop.value) and "record" in str(stop.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(SystemExit) as stop:
        fusion_replay.main(["replay", str(junk)])
    assert "not a fusion_replay recording" in str(stop.value)
