"""Prediction: decoding every common kind of file, a checkpoint written by `fit` predicting the right
labels, a converted torchvision checkpoint predicting what torchvision predicts, and the CLI."""
import json

import numpy as np
import pytest
import torch
import torchvision
from conftest import random_torchvision_v3_small
from PIL import Image
from typer.testing import CliRunner

from mobilenets.cli import app
from mobilenets.core.errors import UsageError
from mobilenets.core.preprocessing import imagenet
from mobilenets.data.transforms import eval_transform
from mobilenets.predict import find_images, load_image, predict
from mobilenets.weights import load_checkpoint

COLOURS = {"red": (210, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210)}
runner = CliRunner()


def _picture(colour, rng, size=(40, 36)):
    """A coloured square on a noisy grey background: the class is the square's colour."""
    w, h = size
    a = rng.integers(90, 140, (h, w, 3))
    x0, y0 = rng.integers(0, w // 4), rng.integers(0, h // 4)
    a[y0:y0 + 3 * h // 4, x0:x0 + 3 * w // 4] = np.clip(np.array(COLOURS[colour]) + rng.integers(-25, 25, 3), 0, 255)
    return Image.fromarray(a.astype(np.uint8))


def _write_kinds(d, rng):
    """One file of each kind predict must read, plus a corrupt and a truncated one."""
    d.mkdir(parents=True, exist_ok=True)
    _picture("red", rng).save(d / "red.jpg", quality=95)
    _picture("blue", rng).save(d / "blue.png")
    _picture("green", rng).save(d / "green.webp", lossless=True)
    _picture("blue", rng).convert("RGBA").save(d / "sub_blue_rgba.png")
    rotated = _picture("red", rng, size=(48, 24))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated.save(d / "red_exif.jpg", exif=exif, quality=95)
    _picture("green", rng).convert("L").save(d / "gray.png")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    good = (d / "red.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (d / "notes.txt").write_text("not an image: ignored when walking a directory")


def test_decoding_modes_and_exif(tmp_path):
    rng = np.random.default_rng(0)
    _write_kinds(tmp_path, rng)
    for name in ("red.jpg", "blue.png", "green.webp", "sub_blue_rgba.png", "gray.png"):
        assert load_image(tmp_path / name).mode == "RGB"
    assert load_image(tmp_path / "red_exif.jpg").size == (24, 48)  # stored 48x24, displayed upright
    files = find_images([tmp_path])
    assert "notes.txt" not in {f.name for f in files} and len(files) == 8
    with pytest.raises(UsageError, match="no such file or folder: .*missing.png"):
        find_images([tmp_path, tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images found in .*empty"):
        find_images(tmp_path / "empty")


def _train_tiny(tmp_path):
    """`mobilenets train` on a folder of three coloured classes (train/ and val/), a few epochs."""
    from mobilenets.train import fit
    rng = np.random.default_rng(1)
    for split, n in (("train", 40), ("val", 8)):
        for c in COLOURS:
            d = tmp_path / "data" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                _picture(c, rng, size=(int(rng.integers(28, 60)), int(rng.integers(28, 60)))).save(d / f"{i}.png")
    result = fit(model="mobilenet_v2", width=0.35, data=f"folder:{tmp_path / 'data'}", resolution=32,
                 epochs=15, batch_size=16, optimizer="adamw", lr=3e-3, weight_decay=0.0, warmup_epochs=0,
                 schedule="constant", ema_decay=0.0, label_smoothing=0.0, threads=1, seed=0,
                 output=str(tmp_path / "run"))
    assert result.best_top1 > 90, result.history
    return result.run_dir / "best.safetensors"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    return _train_tiny(tmp_path_factory.mktemp("train"))


def test_trained_checkpoint_predicts_the_right_labels(trained, tmp_path):
    _write_kinds(tmp_path / "imgs", np.random.default_rng(2))
    result = predict(trained, [tmp_path / "imgs"], top=2, batch_size=3)
    labels = {p.path.rsplit("/", 1)[1]: p.label for p in result.predictions}
    assert labels == {"red.jpg": "red", "blue.png": "blue", "green.webp": "green", "sub_blue_rgba.png": "blue",
                      "red_exif.jpg": "red", "gray.png": labels["gray.png"]}
    assert {s.path.rsplit("/", 1)[1] for s in result.skipped} == {"corrupt.jpg", "truncated.jpg"}
    assert not result.ok and all(s.reason for s in result.skipped)
    top = result.predictions[0].top
    assert len(top) == 2 and top[0].prob >= top[1].prob and top[0].index == sorted(COLOURS).index(top[0].label)
    assert result.preprocessing.kind == "cifar" and result.preprocessing.resolution == 32
    assert result.model == "mobilenet_v2"
    json.dumps(result.to_dict())


def test_cli_predict_exit_codes_and_json(trained, tmp_path):
    d = tmp_path / "imgs"
    _write_kinds(d, np.random.default_rng(3))
    good = [str(d / "red.jpg"), str(d / "blue.png")]

    ok = runner.invoke(app, ["predict", str(trained), *good, "--json", "--top", "1"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)  # JSON only on stdout
    assert [p["top"][0]["label"] for p in data["predictions"]] == ["red", "blue"] and data["skipped"] == []

    some_bad = runner.invoke(app, ["predict", "mobilenet_v2", "--weights", str(trained), str(d)])
    assert some_bad.exit_code == 1
    assert "red_exif.jpg" in some_bad.stdout and "corrupt.jpg" in some_bad.stderr and "truncated.jpg" in some_bad.stderr

    (tmp_path / "notes.pth").write_text("not weights")
    for args, pattern in [
        (["predict", "mobilenet_v2", "--weights", str(tmp_path / "nope.safetensors"), *good], "no such checkpoint"),
        (["predict", "mobilenet_v3_small", "--weights", str(trained), *good], "holds mobilenet_v2"),
        (["predict", "mobilenet_v2", "-w", str(tmp_path / "notes.pth"), *good], "notes.pth is not a checkpoint"),
        (["predict", str(trained), str(tmp_path / "missing.jpg")], "no such file or folder: "),
        (["predict", str(trained), good[0], str(tmp_path / "missing_dir")], "missing_dir"),
        (["predict", str(trained), str(d / "corrupt.jpg")], "cannot read image " + str(d / "corrupt.jpg")),
        (["predict", str(trained), str(d / "truncated.jpg")], "cannot read image " + str(d / "truncated.jpg")),
        (["convert", good[0], "--from", "caffe", "--model", "mobilenet_v2", "-o", str(tmp_path / "o.safetensors")],
         "unknown weights 'caffe'"),
    ]:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert pattern in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not res.stdout.strip(), res.stdout  # no empty table


def test_a_module_is_predicted_in_eval_mode_and_handed_back_as_it_came(tmp_path):
    from mobilenets import create_model
    model = create_model("mobilenet_v3_small", width=0.5, num_classes=3, resolution=32, cifar_stem=True).train()
    _picture("red", np.random.default_rng(6)).save(tmp_path / "a.png")
    first = predict(model, tmp_path / "a.png", top=3)
    again = predict(model, tmp_path / "a.png", top=3)  # eval mode: BN statistics and dropout do not move
    assert model.training and first.to_dict() == again.to_dict()
    assert first.model == "mobilenet_v3_small" and first.preprocessing.kind == "cifar"


def test_inputs_are_checked_before_the_model_is_loaded(tmp_path, monkeypatch):
    """A typo in an image path fails at once, not after a download or a checkpoint load."""
    import mobilenets.predict as P

    def never(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")
    monkeypatch.setattr(P, "resolve_model", never)
    with pytest.raises(UsageError, match="no such file or folder"):
        predict("mobilenet_v3_large", [tmp_path / "typo.jpg"])


def test_converted_torchvision_checkpoint_predicts_the_reference_top5(tmp_path):
    ref = random_torchvision_v3_small()
    torch.save(ref.state_dict(), tmp_path / "mobilenet_v3_small-random.pth")
    out = tmp_path / "mv3s.safetensors"
    res = runner.invoke(app, ["convert", str(tmp_path / "mobilenet_v3_small-random.pth"), "--from", "torchvision",
                              "--model", "mobilenet_v3_small", "-o", str(out)])
    assert res.exit_code == 0, res.output
    old_spelling = runner.invoke(app, ["convert", str(tmp_path / "mobilenet_v3_small-random.pth"), "--from",
                                       "torchvision", "--model", "mobilenet_v3_small",
                                       "--to", str(tmp_path / "b.safetensors")])
    assert old_spelling.exit_code == 0 and (tmp_path / "b.safetensors").is_file(), old_spelling.output
    model, meta = load_checkpoint(out)
    assert meta.preprocessing == imagenet(224) and meta.extra["format"] == "torchvision"

    image = tmp_path / "photo.jpg"
    _picture("red", np.random.default_rng(4), size=(300, 260)).save(image)
    result = predict(out, [image], top=5)
    with torch.no_grad():
        probs = ref(eval_transform(imagenet(224))(load_image(image))[None]).softmax(1)[0]
    expected = probs.topk(5)
    got = result.predictions[0].top
    assert [t.index for t in got] == expected.indices.tolist()
    assert [t.prob for t in got] == pytest.approx(expected.values.tolist(), abs=1e-5)
    assert got[0].label == torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1.meta["categories"][got[0].index]


def test_exported_onnx_file_predicts_like_its_checkpoint(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from mobilenets.deploy.export import export
    _write_kinds(tmp_path / "imgs", np.random.default_rng(5))
    onnx = export(trained, "onnx", tmp_path / "out").path
    want = predict(trained, [tmp_path / "imgs"], top=3)
    got = predict(onnx, [tmp_path / "imgs"], top=3)
    assert [p.label for p in got.predictions] == [p.label for p in want.predictions]
    assert [t.prob for p in got.predictions for t in p.top] == pytest.approx(
        [t.prob for p in want.predictions for t in p.top], abs=1e-4)
    assert got.preprocessing == want.preprocessing and len(got.skipped) == len(want.skipped) == 2
    res = runner.invoke(app, ["predict", str(onnx), str(tmp_path / "imgs" / "red.jpg"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["predictions"][0]["top"][0]["label"] == "red"
    # Without its sidecar the file still says its input size: the graph declares 32 x 32.
    onnx.with_suffix(".json").unlink()
    bare = predict(onnx, [tmp_path / "imgs"], top=3)
    assert bare.preprocessing.resolution == 32 and len(bare.predictions) == len(want.predictions)
