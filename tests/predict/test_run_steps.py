"""`plan --steps`: the stream at any padded size from four corners (predict/size_stream.py), the
run of many steps through one allocator model (predict/run_replay.py), the drawn shapes, and
the command's one-line errors."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from enact_bench.cli import app
from enact_bench.predict.allocator import replay
from enact_bench.predict.run_replay import replay_run
from enact_bench.predict.stream_fit import canonical

cli = CliRunner()
MB = 2**20


def _step(activation: int, image: int):
    """A toy step: parameter, gradient, AdamW state, one image, then zero_grad frees the gradient,
    the forward keeps an activation, the backward makes the new gradient and drops the activation."""
    events = [("alloc", 1, 12 * MB), ("alloc", 2, 12 * MB), ("alloc", 3, 24 * MB), ("alloc", 4, image),
              ("free", 2, 12 * MB), ("alloc", 5, activation), ("alloc", 6, 12 * MB), ("free", 5, activation)]
    return events, (3, 1, 0)


def test_one_step_of_a_run_is_the_single_replay():
    events, counts = _step(30 * MB, 3 * MB)
    run = replay_run([(events, counts)], preallocate=[MB])
    alone = replay(events, preallocate=[MB])
    assert (run.stats.reserved_peak_bytes, run.stats.alloc_peak_bytes) == (alone.reserved_peak_bytes, alone.alloc_peak_bytes)
    assert run.oom_step is None and run.steps == 1


def test_a_run_keeps_the_model_state_and_reaches_a_steady_cache():
    step = _step(30 * MB, 3 * MB)
    two, three = replay_run([step] * 2), replay_run([step] * 3)
    assert three.stats.reserved_end_bytes == two.stats.reserved_end_bytes  # the same shape: nothing new to cache
    # live at the end: parameter, state, the last gradient and batch; nothing of earlier steps left
    assert three.stats.allocated_end_bytes == two.stats.allocated_end_bytes == replay(step[0]).allocated_end_bytes


def test_changing_shapes_can_reserve_more_than_the_largest_step_alone():
    small, large = _step(22 * MB, 3 * MB), _step(30 * MB, 5 * MB)
    alone = replay(large[0]).reserved_end_bytes
    run = replay_run([small, large, small, large])
    assert run.stats.reserved_end_bytes > alone  # the small step's 22 MiB segment stays cached beside the 30 MiB one
    limited = replay_run([small, large], memory_limit_bytes=alone)  # room for the large step alone only
    assert limited.oom_step is None and limited.retries >= 1  # the allocator released the cached segment


def test_the_stream_at_any_padded_size_equals_a_fake_run_there():
    from enact_bench.predict.gpus import custom_gpu
    from enact_bench.predict.plan import PlanRequest, variant_spec
    from enact_bench.predict.search import trainer_for
    from enact_bench.predict.size_stream import corners, fit_sizes, quantized

    trainer = trainer_for(PlanRequest("detr_tiny", custom_gpu(1.5), (96, 128), enact_cluster_size=2),
                          variant_spec("detr", "enact", 2))
    # ENACT at L = 2: token counts kept even (3 x 4 = 12 at the origin), corners 2 x 32 px apart
    assert quantized((96, 150), 32, 2) == (96, 192) and quantized((100, 128), 32, 2) == (128, 128)
    probes = [trainer.step(2, image_size=hw) for hw in corners((96, 128), 32, 2)]
    model = fit_sizes(2, (96, 128), 32, [(m.events, m.event_shapes, m.event_ops) for m in probes], 2)
    far = trainer.step(2, image_size=(256, 160))  # 8 x 5 tokens
    model = model.confirm((256, 160), far.events)
    for hw in ((128, 192), (160, 320)):  # sizes neither fitted nor confirmed at, between and beyond the corners
        other = trainer.step(2, image_size=hw)
        assert canonical(model.synthesize(hw)) == canonical(other.events), hw
    assert other.live_before_counts == far.live_before_counts and other.live_before_counts[1] == 2 * 3
    # the step's zero_grad frees the previous gradients inside the recorded stream (nothing holds them)
    n_state = other.live_before_counts[0]
    state = {key for _, key, _ in other.events[:n_state]}
    freed = {key for kind, key, _ in other.events[n_state:] if kind == "free"} & state
    assert len(freed) == sum(1 for p in trainer.model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="multiples of 32"):
        model.synthesize((100, 128))


def test_drawn_shapes_follow_the_augmentation_and_the_seed():
    from enact_bench.data.augmentation_sizes import sample_padded_sizes, worst_padded_batch

    a, b = sample_padded_sizes(3, 4, 30), sample_padded_sizes(3, 4, 30)
    assert a == b and a != sample_padded_sizes(4, 4, 30)
    top = worst_padded_batch()
    assert all(384 <= h <= top[0] and 384 <= w <= top[1] for h, w in a)
    assert len(set(a)) > 10  # the run's shapes change


def test_steps_on_the_command_line(tmp_path):
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "width": 640, "height": 480},
                                           {"id": 2, "width": 480, "height": 640}], "annotations": []}))
    r = cli.invoke(app, ["plan", "detr_tiny", "--gpu-mem", "4", "-b", "2", "--variants", "original",
                         "--steps", "3", "--sizes-from", str(coco), "--json", "-"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    s = d["variants"][0]["steps"]
    assert s["steps"] == 3 and len(s["shapes"]) == 3 and s["batch_size"] == 2 and str(coco) in s["sources"]
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in s["shapes"])
    assert s["run_device_used_mib"] >= s["run_reserved_mib"] > 0 and s["one_step_device_used_mib"] > 0
    # the run-worst size came from the file's images: a 4:3 landscape and portrait reach the crop's 1250
    assert d["image_size_policy"] == "run-worst" and d["image_size"] == [1250, 1250]
    assert "training steps of drawn padded shapes" in " ".join(r.stderr.split())


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps 0"),
    (["--steps", "5", "--sizes-from", "no/such/file.json"], "no such file"),
    (["--steps", "5", "--sizes-from", "pyproject.toml"], "not a COCO annotation file"),
    (["--steps", "5", "--gpu", "all"], "--steps"),
])
def test_steps_bad_input_is_one_line_and_exit_2(args, message):
    gpu = [] if "--gpu" in args else ["--gpu", "h100"]
    r = cli.invoke(app, ["plan", "detr_tiny", *gpu, *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
