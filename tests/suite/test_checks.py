"""The per-key validators (suite/checks.py): every case key has one, each bad value gives one
message naming the file, the key, the value and what is valid; good values come back normalised."""
from __future__ import annotations

import pytest

from enact_bench.errors import SuiteError
from enact_bench.suite.case import CASE_KEYS
from enact_bench.choices import DTYPES, MODES, TARGETS
from enact_bench.suite.checks import LAUNCHERS, VALIDATORS, check_value
from enact_bench.detectors.sources import SYNTAX

IMAGE_SIZE = '"HxW" (e.g. "800x1333"), [H, W] or "coco"'


def _detectors():
    from enact_bench.detectors import list_detectors
    return ", ".join(sorted(list_detectors()))


def _data_sources():
    from enact_bench.data.sources import list_data_sources
    return ", ".join(list_data_sources())


def _evaluations():
    from enact_bench.evaluate.registry import list_evaluations
    return ", ".join(list_evaluations())


def test_every_case_key_has_one_validator_in_field_order():
    assert tuple(VALIDATORS) == CASE_KEYS


def test_a_key_without_a_validator_lists_the_valid_keys():
    with pytest.raises(SuiteError) as e:
        check_value("batchsize", 2, "W")
    assert str(e.value) == f"W: unknown key 'batchsize'; valid keys: {', '.join(CASE_KEYS)}"


# (key, bad value, the message after "W: key = value: "); a callable builds it from a registry
BAD = [
    ("detector", 3, "expected a detector name (string)"),
    ("detector", "detr_giant", lambda: f"expected one of {_detectors()}, or a model source ({SYNTAX})"),
    *[(k, 1, "expected true or false") for k in
      ("enact", "tf32", "cudnn_benchmark", "flops", "fake", "ddp", "trust_checkpoint")],
    ("enact_config", 3, 'expected a table of EnactConfig fields, e.g. {sigma = 3.0, backend = "sdpa"}'),
    ("enact_config", {"sigma": -1.0}, "EnactConfig.sigma must be a positive finite number; got -1.0"),
    ("mode", "eval", f"expected one of {', '.join(MODES)}"),
    ("dtype", "fp16", f"expected one of {', '.join(DTYPES)}"),
    ("launcher", "mpi", f"expected one of {', '.join(LAUNCHERS)}"),
    ("target", "tpu", f"expected one of {', '.join(TARGETS)}"),
    ("device", "tpu", "expected auto, cpu, cuda or cuda:N"),
    ("device", "cuda:x", "expected auto, cpu, cuda or cuda:N"),
    ("rdzv_endpoint", "host", 'expected "host:port" of node 0 (torchrun --rdzv-endpoint)'),
    *[(k, 0, "expected an integer >= 1") for k in
      ("batch_size", "iters", "warmup", "num_classes", "cpu_threads", "nproc", "nnodes")],
    ("batch_size", True, "expected an integer >= 1"),  # a bool is not an integer here
    ("iters", 2.0, "expected an integer >= 1"),
    ("seed", -1, "expected an integer >= 0"),
    ("node_rank", "0", "expected an integer >= 0"),
    ("clip_max_norm", -0.5, "expected a number >= 0 (0 turns clipping off)"),
    ("clip_max_norm", True, "expected a number >= 0 (0 turns clipping off)"),
    ("image_size", "64by96", f"expected {IMAGE_SIZE}"),
    ("image_size", [1, 2, 3], f"expected {IMAGE_SIZE}"),
    ("data", "imagenet", lambda: f"expected one of {_data_sources()}"),
    ("overrides", 3, "expected a table, e.g. {key = value}"),
    ("data_options", "x", "expected a table, e.g. {key = value}"),
    ("checkpoint", "", "expected a path to a checkpoint file (string)"),
    ("evaluate", [1], "expected a list of evaluation names"),
]


@pytest.mark.parametrize("key, value, tail", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_a_bad_value_names_the_file_key_value_and_what_is_valid(key, value, tail):
    with pytest.raises(SuiteError) as e:
        check_value(key, value, "suites/mine.toml")
    expected = tail() if callable(tail) else tail
    assert str(e.value) == f"suites/mine.toml: {key} = {value!r}: {expected}"


def test_a_side_under_one_pixel_is_named():
    with pytest.raises(SuiteError, match=r"^W: image_size = \[0, 5\]: .*image sides >= 1 pixel"):
        check_value("image_size", [0, 5], "W")


def test_gpu_and_evaluate_name_what_is_known():
    with pytest.raises(SuiteError, match=r"^W: gpu = 'gtx-480': unknown GPU 'gtx-480'; known: .*h100-80gb"):
        check_value("gpu", "gtx-480", "W")
    with pytest.raises(SuiteError) as e:
        check_value("evaluate", ["nope"], "W")  # one item of the list: the message names the item
    assert str(e.value) == f"W: evaluate: unknown evaluation 'nope'; expected one of {_evaluations()}"


@pytest.mark.parametrize("key, value, normalised", [
    ("image_size", " 64 X 96 ", ((64, 96), None)),
    ("image_size", [64, 96], ((64, 96), None)),
    ("image_size", "coco", (None, "coco")),
    ("clip_max_norm", 1, 1.0),
    ("gpu", "H100", "h100-80gb"),  # an alias -> the GPU table's name
    ("evaluate", "coco", ("coco",)),  # one name -> a tuple of names
    ("enact_config", {"backend": "sdpa"}, {"backend": "sdpa"}),
    ("device", "cuda:1", "cuda:1"),
    ("rdzv_endpoint", "node0:29500", "node0:29500"),
    ("node_rank", 0, 0),
])
def test_good_values_come_back_normalised(key, value, normalised):
    out = check_value(key, value, "W")
    assert out == normalised and type(out) is type(normalised)
