"""Config parsing: YAML + overrides, types, unknown keys and malformed files."""
import pytest

from llmtrain.config import load_config
from llmtrain.core.errors import ConfigError
from llmtrain.train.ds_config import build_ds_config
from llmtrain.train.schedule import lr_multiplier


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_default_config_loads():
    cfg = load_config()
    assert cfg.model.n_layer == 4 and cfg.log.name == "tiny"


def test_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "model:\n  n_layer: 2\ntrain:\n  lr: 1e-3\n")
    cfg = load_config(p, ["train.max_steps=50", "model.pos_encoding=rotary", "model.tie_embeddings=false",
                          "train.max_tokens=1e6"])
    assert cfg.model.n_layer == 2 and cfg.train.lr == 1e-3 and cfg.train.max_steps == 50
    assert cfg.model.pos_encoding == "rotary" and cfg.model.tie_embeddings is False
    assert cfg.train.max_tokens == 1_000_000 and isinstance(cfg.train.max_tokens, int)


@pytest.mark.parametrize("override,needle", [
    ("train.max_stepz=5", "unknown key 'train.max_stepz'"),
    ("trian.lr=1", "unknown key 'trian'"),
    ("train.max_steps=abc", "train.max_steps='abc' is not a valid int"),
    ("model.norm=batchnorm", "model.norm='batchnorm' is not one of"),
    ("model.n_head=5", "not divisible by model.n_head=5"),
    ("max_steps=5", "must name a section and a field"),
    ("train.max_steps", "section.key=value"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_in_yaml_names_file(tmp_path):
    p = write(tmp_path, "model:\n  n_layers: 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'model\.n_layers'"):
        load_config(p)


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "model:\n  n_layer: 2\n train: [\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: malformed YAML"):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_pipeline_must_divide_layers():
    with pytest.raises(ConfigError, match="not divisible by parallel.pipeline_stages=3"):
        load_config(None, ["parallel.pipeline_stages=3"])


def test_ds_config_derived_and_conflicts():
    cfg = load_config(None, ["train.global_batch_size=16", "train.micro_batch_size=4"])
    ds = build_ds_config(cfg, {"zero_optimization": {"stage": 2}}, "z.json", "c.yaml", dp_world=2)
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 1.0
    assert ds["bf16"]["enabled"] is False
    # an agreeing value is fine, a conflicting one names both files
    build_ds_config(cfg, {"train_batch_size": 16}, "z.json", "c.yaml", dp_world=2)
    with pytest.raises(ConfigError, match=r"z\.json: 'train_batch_size'=32 conflicts with c\.yaml"):
        build_ds_config(cfg, {"train_batch_size": 32}, "z.json", "c.yaml", dp_world=2)
    with pytest.raises(ConfigError, match="'optimizer' is set in the DeepSpeed JSON"):
        build_ds_config(cfg, {"optimizer": {"type": "Adam"}}, "z.json", "c.yaml", dp_world=2)
    with pytest.raises(ConfigError, match="cannot be split over 3 data-parallel ranks"):
        build_ds_config(cfg, {}, "z.json", "c.yaml", dp_world=3)


def test_pipeline_with_zero2_refused():
    cfg = load_config(None, ["parallel.pipeline_stages=2"])
    with pytest.raises(ConfigError, match="ZeRO-0/1 only"):
        build_ds_config(cfg, {"zero_optimization": {"stage": 2}}, "z.json", "c.yaml", dp_world=1)


def test_schedules():
    # warmup is linear, cosine ends at min ratio, wsd is flat then cools down to min ratio
    assert lr_multiplier(0, 100, "cosine", 10) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, "cosine", 10) == pytest.approx(1.0)
    assert lr_multiplier(99, 100, "cosine", 10, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_multiplier(50, 100, "wsd", 10, decay_fraction=0.2) == 1.0
    assert lr_multiplier(79, 100, "wsd", 10, decay_fraction=0.2) == 1.0
    assert 0.1 < lr_multiplier(85, 100, "wsd", 10, decay_fraction=0.2) < 1.0
    assert lr_multiplier(99, 100, "wsd", 10, min_lr_ratio=0.0, decay_fraction=0.2) == pytest.approx(0.0)
    assert lr_multiplier(99, 100, "constant", 10) == 1.0
