"""Loading suites (suite/load.py): shipped files by name, matrices expanded to stable ids, overrides
and --set, and whole-file errors that name the key, the file and the choices."""
from __future__ import annotations

import pytest

from enact_bench.errors import SuiteError
from enact_bench.suite.load import find_suite, list_suites, load_suite, load_suite_text, parse_set_option


def test_shipped_suites_found_by_name():
    assert {"smoke", "synthetic-detr", "ci"} <= set(list_suites())
    smoke = load_suite("smoke")
    attention_bound = "overrides=enc_layers=8,lr_backbone=0,nheads=64"
    assert [c.case_id for c in smoke.cases] == [
        f"detr_tiny-base-train-b1-256x320-{attention_bound}", f"detr_tiny-enact-train-b1-256x320-{attention_bound}",
        "detr_tiny-base-infer-b2-128x160", "detr_tiny-enact-infer-b2-128x160"]
    assert all(c.device in ("cpu", "cuda") for c in smoke.cases)  # "auto" resolved


def test_synthetic_detr_batches_follow_the_released_setting():
    s = load_suite("synthetic-detr")
    by_mode = {(c.mode, c.enact): c for c in s.cases}
    assert len(s.cases) == 4
    assert by_mode[("train", False)].batch_size == 2 and by_mode[("infer", True)].batch_size == 1
    assert all(c.image_size == (800, 1333) and c.detector == "detr_r50" for c in s.cases)


def _write(tmp_path, text, name="mine.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = '''
name = "mine"
[defaults]
detector = "detr_tiny"
image_size = "64x96"
'''


def test_user_file_by_path_and_matrix_groups(tmp_path):
    p = _write(tmp_path, BASE + '''
[[matrix]]
enact = [false, true]
batch_size = [1, 2]
[[matrix]]
mode = "infer"
image_size = [[32, 48], "coco"]
dtype = "bfloat16"
''')
    s = load_suite(str(p))
    ids = [c.case_id for c in s.cases]
    assert ids[:4] == ["detr_tiny-base-train-b1-64x96", "detr_tiny-base-train-b2-64x96",
                       "detr_tiny-enact-train-b1-64x96", "detr_tiny-enact-train-b2-64x96"]
    assert ids[4:] == ["detr_tiny-base-infer-b2-32x48-dtype=bfloat16", "detr_tiny-base-infer-b2-coco-dtype=bfloat16"]
    assert s.cases[5].image_size is None and s.cases[5].image_size_dist == "coco"
    assert find_suite(str(p)) == p


@pytest.mark.parametrize("text, needles", [
    ('[defaults]\ndetector = "detr_tiny"\nimage_size = "64x96"\nbatchsize = 2', ["batchsize", "batch_size"]),
    ('bogus = 1\n[defaults]\ndetector = "detr_tiny"', ["bogus", "top-level"]),
    (BASE + '[matrix]\nmode = ["train", "eval"]', ["mode", "'eval'", "train, infer"]),
    (BASE + '[matrix]\ndetector = ["detr_tiny", "detr_giant"]', ["detector", "detr_giant", "detr_r50"]),
    (BASE + '[matrix]\nbatch_size = [0]', ["batch_size", ">= 1"]),
    (BASE + '[matrix]\nimage_size = ["64by96"]', ["image_size", "HxW"]),
    (BASE + '[matrix]\ndata = ["imagenet"]', ["data", "synthetic"]),
    (BASE + '[matrix]\ndata_options = {colour = 1}', ["colour", "max_objects"]),
    (BASE + '[matrix]\nenact = [true]\nenact_config = {sigma = -1.0}', ["enact_config", "sigma"]),
    (BASE + '[matrix]\ndevice = ["tpu"]', ["device", "cuda"]),
    (BASE + '[matrix]\ncheckpoint = "nowhere.pth"', ["checkpoint", "not found"]),
    ('[defaults]\ndetector = "detr_tiny"', ["image_size"]),
])
def test_bad_input_names_key_file_and_choices(tmp_path, text, needles):
    p = _write(tmp_path, text)
    with pytest.raises(SuiteError) as e:
        load_suite(str(p))
    msg = str(e.value)
    assert str(p) in msg
    for n in needles:
        assert n in msg


def test_unknown_suite_lists_shipped_ones():
    with pytest.raises(SuiteError, match="smoke"):
        find_suite("no-such-suite")


def test_overrides_replace_axes_and_set_table_entries():
    s = load_suite("smoke", [("detector", ["detr_tiny"]), ("batch_size", [1]), ("overrides.num_queries", [5])])
    assert len(s.cases) == 4 and all(c.batch_size == 1 and c.overrides.get("num_queries") == 5 for c in s.cases)
    assert s.cases[0].overrides == {"lr_backbone": 0, "enc_layers": 8, "nheads": 64, "num_queries": 5}  # entry added
    s = load_suite("smoke", [("mode", ["train"]), ("image_size", ["128x160"]), ("batch_size", [2]),
                             ("overrides", [{}])])
    # the two groups now differ in nothing: duplicates dropped
    assert [c.case_id for c in s.cases] == ["detr_tiny-base-train-b2-128x160", "detr_tiny-enact-train-b2-128x160"]
    with pytest.raises(SuiteError, match="unknown key"):
        load_suite("smoke", [("speed", [1])])


def test_enact_config_only_on_enact_cases():
    s = load_suite_text(BASE + '[matrix]\nenact = [false, true]\nenact_config = {backend = "sdpa"}')
    base, enact = s.cases
    assert base.enact_config is None and enact.enact_config == {"backend": "sdpa"}
    assert enact.case_id == "detr_tiny-enact-train-b2-64x96-enact_config=backend=sdpa"


def test_set_option_parses_toml_values():
    assert parse_set_option("iters=3") == ("iters", 3)
    assert parse_set_option("enact=true") == ("enact", True)
    assert parse_set_option("mode=infer") == ("mode", "infer")
    assert parse_set_option('image_size="64x96"') == ("image_size", "64x96")
    with pytest.raises(SuiteError, match="key=value"):
        parse_set_option("iters")


def test_registry_import_failure_is_loud(monkeypatch):
    """A registry that cannot be imported must not turn detector validation off."""
    import sys

    monkeypatch.setitem(sys.modules, "enact_bench.detectors", None)  # import -> ImportError
    with pytest.raises(ImportError):
        load_suite_text('[defaults]\ndetector = "no_such_detector"\nimage_size = "64x64"\n')


def test_evaluation_data_requirement_is_checked_at_load():
    with pytest.raises(SuiteError, match=r"evaluate = \['coco'\] needs data = 'coco' or 'toy'.*data = 'synthetic'"):
        load_suite_text('[defaults]\ndetector = "detr_tiny"\nimage_size = "64x64"\nmode = "infer"\n'
                        'evaluate = ["coco"]\n')


def test_fake_enact_without_cluster_size_fails_at_load_with_the_set_form():
    text = '[defaults]\ndetector = "detr_tiny"\nimage_size = "64x64"\nfake = true\n[matrix]\nenact = [false, true]\n'
    with pytest.raises(SuiteError, match=r"--set enact_config\.cluster_size=6"):
        load_suite_text(text)
    ok = load_suite_text(text, overrides=[("enact_config.cluster_size", [6])])
    assert [c.enact for c in ok.cases] == [False, True] and ok.cases[1].enact_config == {"cluster_size": 6}


def test_unknown_detector_override_fails_at_load():
    with pytest.raises(SuiteError, match=r"unknown key\(s\) 'nonsense' for detector 'detr_tiny'.*hidden_dim"):
        load_suite_text('[defaults]\ndetector = "detr_tiny"\nimage_size = "64x64"\noverrides = {nonsense = 1}\n')


def test_checkpoint_that_is_not_a_torch_file_fails_at_load(tmp_path):
    (tmp_path / "w.pth").write_text("hello")
    with pytest.raises(SuiteError, match="not a PyTorch checkpoint"):
        load_suite_text('[defaults]\ndetector = "detr_tiny"\nimage_size = "64x64"\ncheckpoint = "w.pth"\n',
                        base_dir=tmp_path)
    suite = load_suite_text('[defaults]\ndetector = "detr_tiny"\nimage_size = "64x64"\ntrust_checkpoint = true\n')
    assert suite.cases[0].trust_checkpoint and suite.cases[0].case_id == "detr_tiny-base-train-b2-64x64"
