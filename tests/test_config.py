import pytest

from kdforge.config import ConfigError, load_config, save_config
from kdforge.engine.build import build_terms
from kdforge.losses import DKDLoss, FitNetLoss


def _write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_recipe_merges_over_defaults_and_overrides_win(tmp_path):
    path = _write(tmp_path, "student: {name: resnet8}\noptim: {lr: 0.1}\n")
    cfg = load_config(path, ["optim.lr=0.2", "schedule.milestones=[1,2]"])
    assert cfg.optim.lr == 0.2 and cfg.optim.momentum == 0.9
    assert list(cfg.schedule.milestones) == [1, 2]
    assert cfg.schedule.epochs == 240


def test_unknown_key_in_recipe_names_key_and_valid_keys(tmp_path):
    path = _write(tmp_path, "student: {name: resnet8}\noptim: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "optim.learning_rate" in message and "lr" in message and "momentum" in message


def test_unknown_override_and_malformed_override(tmp_path):
    path = _write(tmp_path, "student: {name: resnet8}\n")
    with pytest.raises(ConfigError, match="train.sed"):
        load_config(path, ["train.sed=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["optim.lr"])
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(path, ["optim.lr=fast"])


def test_missing_student_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="student.name"):
        load_config(_write(tmp_path, "optim: {lr: 0.1}\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(_write(tmp_path, "student: {name: resnet8}\n"), ["optim.lr=0.3"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


def test_build_terms_by_name_and_by_type():
    terms = build_terms(
        {
            "dkd": {"beta": 2.0},
            "hint": {"type": "fitnet", "student_layer": "layer2", "teacher_layer": "layer3"},
        }
    )
    assert isinstance(terms["dkd"], DKDLoss) and terms["dkd"].beta == 2.0
    assert isinstance(terms["hint"], FitNetLoss) and terms["hint"].teacher_layer == "layer3"


def test_build_terms_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown loss type 'kdd'.*kd, dkd"):
        build_terms({"kdd": {}})
    with pytest.raises(
        ConfigError, match=r"loss.kd \(kd\): unknown key\(s\) \['temp'\].*temperature"
    ):
        build_terms({"kd": {"temp": 2}})
    with pytest.raises(ConfigError, match="missing required key.*student_layer"):
        build_terms({"fitnet": {"teacher_layer": "layer2"}})
