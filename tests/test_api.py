"""The Python API reads like the tutorial."""

from __future__ import annotations

import numpy as np
import pytest

import cnnlab
from cnnlab.config import TrainConfig, config_from_dict
from cnnlab.errors import ConfigError


def test_tutorial_flow_in_python(seed_dir, tmp_path):
    ds = cnnlab.load_dataset(seed_dir, classes="circle,square")
    assert ds.image_shape == (32, 32, 3) and ds.class_names == ["circle", "square"]
    assert set(ds.splits) == {"train", "val", "test"}
    assert ds.train.x.dtype == np.uint8
    model = cnnlab.create_model("seed_cnn", ds)
    run = cnnlab.train(model, ds, epochs=2, batch_size=32, out=tmp_path / "run", quiet=True)
    assert run.run_dir == tmp_path / "run" and len(run.history) == 2
    res = cnnlab.evaluate(run, ds)
    assert res["split"] == "test" and res["n"] == 40 and res["accuracy"] == pytest.approx(run.test["accuracy"], abs=0.03)
    one = cnnlab.predict(run, ds.splits["test"].x[0])
    assert one["class"] in ds.class_names
    from PIL import Image

    Image.fromarray(ds.splits["test"].x[1]).save(tmp_path / "cat.png")
    p = cnnlab.predict(tmp_path / "run", tmp_path / "cat.png")
    assert p["path"].endswith("cat.png") and p["class"] in ds.class_names
    again = cnnlab.evaluate(tmp_path / "run", seed_dir)  # loaded as the model saw it (classes from its config)
    assert again["accuracy"] == pytest.approx(res["accuracy"], abs=1e-6)


def test_train_by_names(tmp_path):
    run = cnnlab.train("seed_cnn", "builtin:shapes?n=200&size=32&classes=3", epochs=1, out=tmp_path / "r", quiet=True)
    assert run.meta["class_names"] == ["circle", "square", "triangle"]
    assert run.test["n"] == 40


def test_config_precedence_and_validation():
    base = config_from_dict({"data": "x", "epochs": 3, "lr": 1})
    assert base.lr == 1.0 and base.epochs == 3
    over = config_from_dict({"epochs": 7}, base=base)
    assert over.epochs == 7 and over.lr == 1.0 and base.epochs == 3
    with pytest.raises(ConfigError, match="unknown key 'epoch'.*epochs"):
        config_from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="batch_size"):
        config_from_dict({"data": "x", "batch_size": True})
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(data="x", batch_size=0).validate()
    assert config_from_dict({"image_shape": [10, 10, 1]}).image_shape == [10, 10, 1]


def test_builtin_shapes_options_and_errors():
    ds = cnnlab.load_dataset("builtin:shapes?n=100&size=40&classes=5", val_split=0)
    assert ds.image_shape == (40, 40, 3) and ds.num_classes == 5
    assert len(ds.train) == 80 and len(ds.splits["test"]) == 20
    with pytest.raises(cnnlab.CnnlabError, match="unknown option 'colour'"):
        cnnlab.load_dataset("builtin:shapes?colour=red")
    with pytest.raises(cnnlab.CnnlabError, match="builtin:shapes or builtin:digits"):
        cnnlab.load_dataset("builtin:cifar")


def test_explain_in_python(trained_run, tmp_path):
    run, _ = trained_run
    from PIL import Image

    from conftest import two_class_images

    x, _ = two_class_images(2, size=32)
    Image.fromarray(x[0]).save(tmp_path / "a.png")
    records = cnnlab.explain(run, tmp_path / "a.png", method="gradcam", filters=True, out=tmp_path / "ex")
    assert records[0]["filters"].endswith("filters.png") and (tmp_path / "ex" / "filters.png").is_file()
    assert records[1]["class"] in ("circle", "square") and (tmp_path / "ex" / "a_gradcam.png").is_file()
