"""Our checkpoint format: metadata round trip, atomic writes, safe loading, helpful mismatches."""
import json

import pytest
import torch
from safetensors import safe_open

from mobilenets import UsageError, create_model
from mobilenets.core.files import atomic_path
from mobilenets.core.preprocessing import cifar
from mobilenets.data.labels import class_names_for, drop_background, imagenet_classes
from mobilenets.weights import (
    SOURCES,
    find_source,
    load_checkpoint,
    load_strict,
    read_weights,
    resolve_model,
    save_checkpoint,
    sources_for,
)
from mobilenets.weights.io import suggest_variant


def _tiny(**kw):
    kw = {"width": 0.35, "num_classes": 3, "resolution": 32, "cifar_stem": True, **kw}
    return create_model("mobilenet_v2", **kw).eval()


def test_round_trip_keeps_weights_config_and_metadata(tmp_path):
    model = _tiny()
    path = save_checkpoint(tmp_path / "m.safetensors", model, preprocessing=cifar(32),
                           class_names=["red", "green", "blue"], variant="mobilenet_v2", extra={"epochs": 3})
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata()
    assert md["format"] == "mobilenets" and md["variant"] == "mobilenet_v2"
    assert (md["width"], md["resolution"], md["num_classes"]) == ("0.35", "32", "3")
    assert json.loads(md["class_names"]) == ["red", "green", "blue"]
    assert json.loads(md["preprocessing"])["kind"] == "cifar"

    loaded, meta = load_checkpoint(path)
    assert meta.config == model.config and meta.class_names == ["red", "green", "blue"]
    assert meta.preprocessing == cifar(32) and meta.extra == {"epochs": 3}
    assert loaded.checkpoint_meta is meta and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # Saving a loaded model again keeps its names and preprocessing without restating them.
    again = save_checkpoint(tmp_path / "again.safetensors", loaded)
    assert load_checkpoint(again)[1].class_names == ["red", "green", "blue"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.safetensors", "m.safetensors"]  # no temp files


def test_save_rejects_wrong_number_of_class_names(tmp_path):
    with pytest.raises(UsageError, match="2 class names for a model with 3 classes"):
        save_checkpoint(tmp_path / "m.safetensors", _tiny(), class_names=["a", "b"])
    assert not any(tmp_path.iterdir())


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.safetensors", _tiny())
    before = path.read_bytes()

    def boom(fd):
        raise OSError("disk full")
    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _tiny(num_classes=5))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_atomic_path_renames_on_success_and_cleans_up_when_the_writer_fails(tmp_path):
    target = tmp_path / "sub" / "plot.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".png"  # writers pick the format by suffix
        tmp.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError, match="writer crashed"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["plot.png"]


def test_foreign_pth_loads_weights_only_and_refuses_code(tmp_path):
    sd = _tiny().state_dict()
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, tmp_path / "ok.pth")
    tensors, md = read_weights(tmp_path / "ok.pth")
    assert md == {} and tensors.keys() == sd.keys()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UsageError, match="weights_only"):
        read_weights(tmp_path / "evil.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UsageError, match="not a readable"):
        read_weights(tmp_path / "junk.safetensors")
    with pytest.raises(UsageError, match="no such checkpoint"):
        read_weights(tmp_path / "missing.pth")


@pytest.mark.parametrize("content,what", [
    (b"hello world, not weights\n", "is not a checkpoint: neither a safetensors file nor a PyTorch file"),
    (b"", "is not a checkpoint"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "is not a checkpoint"),
    (b"PK\x03\x04" + bytes(64), "is not a readable PyTorch checkpoint"),
    (b"\x80\x02]q\x00.", "is not a readable PyTorch checkpoint"),
])
def test_files_that_are_not_checkpoints_are_one_line_errors(tmp_path, content, what):
    """A text file given as ``-w x.pth`` raised ``KeyError: 101`` from torch.load; every verb loads
    weights through ``read_weights``, so each now says what the file is not."""
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    for load in (read_weights, lambda p: create_model("mobilenet_v2", pretrained=str(p)),
                 lambda p: resolve_model("mobilenet_v2", p)):
        with pytest.raises(UsageError) as info:
            load(path)
        assert str(path) in str(info.value) and what in str(info.value) and "\n" not in str(info.value)


def test_a_pickled_object_that_is_not_a_state_dict_is_named(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    torch.save({"epoch": 3}, tmp_path / "numbers.pth")
    for name in ("list.pth", "numbers.pth"):
        with pytest.raises(UsageError, match=f"{name} is not a state dict"):
            read_weights(tmp_path / name)
    with pytest.raises(UsageError, match="is a folder, not a checkpoint"):
        read_weights(tmp_path)


def test_bare_weights_need_a_config(tmp_path):
    from safetensors.torch import save_file
    model = _tiny()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(UsageError, match="no mobilenets metadata.*mobilenets convert"):
        load_checkpoint(tmp_path / "bare.safetensors")
    loaded, meta = load_checkpoint(tmp_path / "bare.safetensors", config=model.config)
    assert meta.variant is None and loaded.config == model.config


def test_mismatch_names_keys_shapes_and_the_variant_that_fits():
    weights = create_model("mobilenet_v3_small", width=0.75).state_dict()
    with pytest.raises(UsageError) as info:
        load_strict(create_model("mobilenet_v3_small"), weights, what="w.safetensors")
    msg = str(info.value)
    assert "\n" not in msg
    assert "w.safetensors does not fit mobilenet_v3_small" in msg
    assert " shape conflicts: " in msg and " vs " in msg
    assert "the shapes fit mobilenet_v3_small with width=0.75 (mobilenet_v3_small_075)" in msg
    # Another family: missing and unexpected keys are listed too.
    with pytest.raises(UsageError, match=r"missing: .*unexpected: .*the shapes fit mobilenet_v3_small with width=0.75"):
        load_strict(create_model("mobilenet_v2"), weights)
    assert suggest_variant({"x": torch.zeros(1)}) is None


def test_load_pretrained_from_our_file_checks_the_variant(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _tiny(), class_names=["r", "g", "b"])
    model = create_model("mobilenet_v2", width=0.35, pretrained=str(path))  # num_classes: the file's
    assert model.config.num_classes == 3 and model.checkpoint_meta.class_names == ["r", "g", "b"]
    tuned = create_model("mobilenet_v2", width=0.35, pretrained=path, num_classes=7)  # fine-tuning head
    assert tuned.classifier.out_features == 7 and tuned.checkpoint_meta.class_names is None
    with pytest.raises(UsageError, match="holds mobilenet_v2 .*width 0.35.*not mobilenet_v3_small"):
        create_model("mobilenet_v3_small", pretrained=path)
    with pytest.raises(UsageError, match="no such checkpoint"):
        create_model("mobilenet_v2", pretrained=str(tmp_path / "nope.safetensors"))


def test_labels():
    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet tissue"
    assert class_names_for(1001)[:2] == ["background", "tench"]
    assert class_names_for(3) == ["0", "1", "2"] and class_names_for(2, ["a", "b"]) == ["a", "b"]
    w, b = drop_background(torch.arange(1001.0)[:, None], torch.arange(1001.0))
    assert w.shape == (1000, 1) and b[0] == 1


def test_registry_covers_the_published_checkpoints():
    tags = {s.tag for s in sources_for("mobilenet_v2")}
    assert {"torchvision.IMAGENET1K_V1", "torchvision.IMAGENET1K_V2", "timm.ra_in1k", "keras.imagenet"} <= tags
    assert {s.tag for s in sources_for("mobilenet_v3_large")} >= {"torchvision.IMAGENET1K_V2", "timm.tf_in1k"}
    tv = find_source("mobilenet_v3_small", "torchvision")
    assert tv.url.endswith("mobilenet_v3_small-047dcff4.pth") and tv.sha256 == "047dcff4" and tv.top1 == 67.668
    assert find_source("mobilenet_v3_large", "timm.tf_in1k").tf
    keras = find_source("mobilenet_v3_small_minimal", "keras")
    assert keras.md5 == "99cd97fb2fcdad2bf028eb838de69e37" and keras.preprocessing.mean == (0.5, 0.5, 0.5)
    assert find_source("mobilenet_v1_050_160").filename == "mobilenet_5_0_160_tf.h5"
    assert find_source("mobilenet_v2", "torchvision.IMAGENET1K_V2").preprocessing.crop_pct == 224 / 232
    with pytest.raises(UsageError, match="did you mean timm.tf_in1k"):
        find_source("mobilenet_v3_large", "timm.tf_in1")
    with pytest.raises(UsageError, match="no published weights for mobilenext"):
        create_model("mobilenext", pretrained=True)


def test_every_source_says_which_digest_verifies_it():
    kinds = {(s.format, s.hash_kind) for s in SOURCES}
    assert kinds == {("torchvision", "sha256-prefix"), ("timm", "sha256-prefix"), ("timm", "none"),
                     ("keras", "md5"), ("keras", "none")}
    for s in SOURCES:
        if s.hash_kind == "sha256-prefix":  # torch.hub's convention: the prefix is in the file name
            assert s.filename.rsplit("-", 1)[1].split(".")[0] == s.sha256 and len(s.sha256) == 8
    # Hugging Face-only timm files publish no hash: V1's ra4 weights and all 15 MobileNetV4 ones
    unhashed = {s.reference for s in SOURCES if s.hash_kind == "none" and s.format == "timm"}
    assert unhashed - {s.reference for s in SOURCES if s.family.startswith("mobilenet_v4")} == {
        "mobilenetv1_100.ra4_e3600_r224_in1k"}
    assert len(unhashed) == 16 and all(s.hash_kind == "none" for s in SOURCES if s.family.startswith("mobilenet_v4"))
    assert all(s.family in ("mobilenet_v1", "mobilenet_v2") for s in SOURCES if (s.format, s.hash_kind) == (
        "keras", "none"))
