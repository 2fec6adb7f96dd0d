"""examples/fusion_replay.py: a recorded run's uploads fused again reproduce its FM."""

import importlib.util
import json
import pickle
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
    path = tmp_path_factory.mktemp("replay") / "uploads.safetensors"
    fusion_replay.main(["record", str(path), "--set", *TINY])
    return fusion_replay.load_recording(path)


@pytest.fixture(scope="module")
def recorded_files(recording, tmp_path_factory):
    """The recording's two files, written again (the fixture's own are left intact)."""
    path = tmp_path_factory.mktemp("again") / "uploads.safetensors"
    fusion_replay.save_state(recording, path)
    return fusion_replay.recording_files(path)


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
        fusion_replay.main(["replay", str(tmp_path / "missing.safetensors")])
    assert "file not found" in str(stop.value) and "record" in str(stop.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(SystemExit) as stop:
        fusion_replay.main(["replay", str(junk)])
    assert "not a fusion_replay recording" in str(stop.value)


def test_a_recording_is_safetensors_and_json_and_any_of_its_names_reads_it(recorded_files):
    tensors, skeleton = recorded_files
    assert tensors.suffix == ".safetensors" and skeleton.suffix == ".json"
    json.loads(skeleton.read_text())  # plain JSON
    for name in (tensors, skeleton, tensors.with_suffix(""), tensors.with_suffix(".pt")):
        assert len(fusion_replay.load_recording(name)["rounds"]) == 4


class _Trap:
    """Unpickling this creates a file: proof that code from the recording was executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_recording_is_refused_without_executing_it(tmp_path):
    import torch

    marker = tmp_path / "executed"
    old = tmp_path / "uploads.pt"  # the old format: a torch.save pickle
    torch.save({"format": "fclkit.fusion-replay/1", "trap": _Trap(str(marker))}, old)
    with pytest.raises(SystemExit) as stop:
        fusion_replay.main(["replay", str(old)])
    assert "not a fusion_replay recording" in str(stop.value)
    # offered in place of the tensors file
    tensors, skeleton = fusion_replay.recording_files(tmp_path / "fake.safetensors")
    tensors.write_bytes(pickle.dumps({"trap": _Trap(str(marker))}))
    skeleton.write_text("{}")
    with pytest.raises(SystemExit) as stop:
        fusion_replay.main(["replay", str(tensors)])
    assert "is damaged" in str(stop.value) and str(tensors) in str(stop.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated tensors", "flipped tensors", "bad json",
                                    "json of another shape", "no json"])
def test_a_damaged_recording_is_one_clear_error(recorded_files, tmp_path, damage):
    tensors, skeleton = recorded_files
    path = tmp_path / "r.safetensors"
    data, meta = tensors.read_bytes(), skeleton.read_text()
    if damage == "truncated tensors":
        data = data[: len(data) // 3]
    elif damage == "flipped tensors":
        data = bytes([data[0] ^ 0xFF]) + data[1:]
    elif damage == "bad json":
        meta = meta[: len(meta) // 2]
    elif damage == "json of another shape":
        skel = json.loads(meta)
        skel["rounds"] = [[0, 0, [{"client_id": 0}]]]
        meta = json.dumps(skel)
    path.write_bytes(data)
    if damage != "no json":
        path.with_suffix(".json").write_text(meta)
    with pytest.raises(SystemExit) as stop:
        fusion_replay.main(["replay", str(path)])
    message = str(stop.value)
    assert message.startswith("error: invalid recording")
    assert ("is damaged" in message or "file not found" in message), message
    assert "Traceback" not in message
