import pytest
import yaml

from conftest import one_line_error
from skinseg.config import Config, ConfigError, field_range, parse_overrides


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = Config()
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    again = Config.from_yaml(path)
    assert again == cfg
    assert again.loss == {"bce": 1.0, "dice": 1.0}
    assert again.mean is None  # null: decided by normalization()
    resolved = Config(mean=[0.1, 0.2, 0.3], std=[1, 1, 1])
    resolved.to_yaml(path)
    assert Config.from_yaml(path).mean == (0.1, 0.2, 0.3) and isinstance(Config.from_yaml(path).mean, tuple)


def test_unknown_key_names_it_and_the_closest_valid_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nbatchsize: 4\n")
    with pytest.raises(ConfigError, match=r"unknown key 'batchsize'.*did you mean 'batch_size'"):
        Config.from_yaml(path)


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("model", "unet++", "unet, unet-residual, unet-attention, unet-timm-attention"),
        ("optimizer", "adamm", "adam, adamw, sgd, rmsprop, adabelief, adagrad"),
        ("scheduler", "polynomial", "reduce_lr, cosine, cosine_restart, step, exp, onecycle, poly"),
        ("init", "he", "xavier, kaiming, orthogonal, normal, none"),
        ("resize_mode", "crop", "stretch, pad"),
    ],
)
def test_bad_choice_names_the_valid_choices(key, value, fragment):
    with pytest.raises(ConfigError, match=key) as err:
        Config.from_dict({key: value})
    assert fragment in str(err.value)


def test_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="image_size"):
        Config(image_size=250)
    with pytest.raises(ConfigError, match="epochs"):
        Config.from_dict({"epochs": "many"})
    with pytest.raises(ConfigError, match=r"unknown loss 'dise'.*did you mean 'dice'"):
        Config.from_dict({"loss": {"dise": 1.0}})
    with pytest.raises(ConfigError, match="pos_weight"):
        Config.from_dict({"pos_weight": [1.0, 2.0]})
    with pytest.raises(ConfigError, match="dev_fraction"):
        Config.from_dict({"val_split": "dev"})
    with pytest.raises(ConfigError, match=r"crop_size: 160 .*image_size \(128\)"):
        Config(image_size=128, crop_size=160)
    with pytest.raises(ConfigError, match="crop_size: 100"):
        Config(image_size=128, crop_size=100)


def test_types_are_coerced_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"lr": "3e-4", "epochs": 2.0, "bilinear": "false", "t_max": 5}))
    cfg = Config.from_yaml(path, overrides=parse_overrides(["batch_size=16", "loss={focal: 1, dice: 0.5}"]))
    assert cfg.lr == pytest.approx(3e-4) and cfg.epochs == 2 and cfg.bilinear is False and cfg.t_max == 5
    assert cfg.batch_size == 16 and cfg.loss == {"focal": 1.0, "dice": 0.5}
    # YAML 1.1 reads `off` as false; the string choice `off` survives, in files and on the command line
    path.write_text("amp: off\n")
    assert Config.from_yaml(path).amp == "off"
    assert Config.from_yaml(path, overrides=parse_overrides(["amp=off"])).amp == "off"
    with pytest.raises(ConfigError, match="tta: 'off' is not valid"):
        Config.from_dict({"tta": False})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Config.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        Config.from_yaml(bad)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


def _refusal(**kw):
    with pytest.raises(ConfigError) as e:
        Config.from_dict(kw)
    return str(e.value)
def test_every_refusal_is_one_line_naming_the_key_what_it_accepts_and_what_it_got():
    """pydantic's errors come out as the one-line messages the command line prints."""
    assert _refusal(lr=-1) == "lr: must be > 0, got -1"
    assert _refusal(pos_weight=[1, 1, -1, 1, 1]) == "pos_weight: every value must be > 0, got [1, 1, -1, 1, 1]"
    assert _refusal(epochs="many") == "epochs='many' is not a valid whole number"
    assert _refusal(epochs=None) == "epochs cannot be null"
    assert _refusal(lr=float("nan")) == "lr: must be a finite number, got nan"
    assert _refusal(model="unet++").startswith("model: 'unet++' is not valid (did you mean 'unet'?); choose one of unet, ")
    assert _refusal(mean=[0.5, 0.5]) == "mean: needs three values (R, G, B), or null for the default"
    assert _refusal(aug_flip_p=True).startswith("aug_flip_p=True is not a valid number")
    assert _refusal(bilinear="yes").startswith("bilinear='yes' is not a valid true/false")
    assert _refusal(loss={"bce": -1}) == "loss: every value must be >= 0, got {'bce': -1}"
    assert field_range("dev_fraction") == (0.0, 1.0, False, True)
    c = Config(epochs=3).replace(lr=0.01)
    assert c.epochs == 3 and c.lr == 0.01 and Config(epochs=3) != c
    with pytest.raises(ConfigError, match="unknown key"):
        Config(epoch=3)
    with pytest.raises(ConfigError, match=r"config\.yaml: lr"):
        Config.from_dict({"lr": 0}, source="config.yaml")


@pytest.mark.parametrize("key, value", [("t_max", 2.5), ("dev_seed", 1.9), ("patience", 1.5), ("epochs", 2.5),
                                        ("epochs", True), ("batch_size", False), ("lr", float("nan")),
                                        ("lr", float("inf")), ("grad_clip", float("nan")), ("mean", [0.5, "x", 0.5]),
                                        ("loss", {"bce": True})])
def test_bad_numbers_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        Config.from_dict({key: value})


def test_whole_floats_and_numeric_strings_still_read_as_integers():
    cfg = Config.from_dict({"t_max": 3.0, "dev_seed": "7", "epochs": 4.0})
    assert (cfg.t_max, cfg.dev_seed, cfg.epochs) == (3, 7, 4)


def test_yaml_nan_and_booleans_are_refused_from_a_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: .nan\n")
    assert "lr" in one_line_error(capsys, ["train", "--config", str(cfg)])
    cfg.write_text("epochs: true\n")
    assert "epochs" in one_line_error(capsys, ["train", "--config", str(cfg)])


def test_classes_other_than_five_is_refused_at_config_time():
    with pytest.raises(ConfigError, match="classes: 3 is not supported.*must be 5"):
        Config(classes=3)


def test_set_values_that_are_not_yaml_are_one_line_errors(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\n")
    err = one_line_error(capsys, ["train", "--config", str(cfg), "--set", "loss={bce: [1"])
    assert "--set" in err and "not valid YAML" in err


def test_python_tags_in_yaml_are_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: !!python/object/apply:os.system ['echo pwned']\n")
    assert "not valid YAML" in one_line_error(capsys, ["train", "--config", str(cfg)])
