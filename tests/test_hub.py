"""Downloads: file:// URLs the tests write, verified, atomic, one-line errors when offline."""
import hashlib
import io

import pytest
import torch
from conftest import random_torchvision_v3_small

from mobilenets import UsageError, create_model
from mobilenets.weights import hub, sources
from mobilenets.weights.hub import cache_dir, check_digest, download, fetch, hash_kind


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def blob(tmp_path):
    data = bytes(range(256)) * 5000  # > 1 MiB: several chunks
    path = tmp_path / "remote" / "weights-abc.pth"
    path.parent.mkdir()
    path.write_bytes(data)
    return path, data, hashlib.sha256(data).hexdigest()


def _parts(d):
    return [p.name for p in d.rglob("*.part")] if d.exists() else []


def test_cache_dir_respects_mobilenets_home_then_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("MOBILENETS_HOME")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert cache_dir() == tmp_path / "torch" / "hub" / "mobilenets"


def test_file_url_downloads_verified(home, blob, capsys):
    path, data, sha = blob
    got = fetch(path.as_uri(), "w.pth", sha256=sha, progress=True)
    assert got == home / "w.pth" and got.read_bytes() == data
    assert not _parts(home)
    # Cached: a second fetch does not read the URL (it is gone now) and the sha256 prefix suffices.
    path.unlink()
    assert fetch(path.as_uri(), "w.pth", sha256=sha[:8]) == got


def test_sha256_mismatch_deletes_and_says_so(home, blob):
    path, _, sha = blob
    with pytest.raises(UsageError) as info:
        fetch(path.as_uri(), "w.pth", sha256="0" * 64)
    msg = str(info.value)
    assert "sha256" in msg and "deleted" in msg and path.as_uri() in msg and "\n" not in msg
    assert not (home / "w.pth").exists() and not _parts(home)


def test_md5_is_checked_too(home, blob):
    path, data, _ = blob
    good = hashlib.md5(data).hexdigest()
    assert fetch(path.as_uri(), "a.h5", md5=good).read_bytes() == data
    with pytest.raises(UsageError, match="md5 .* does not match"):
        fetch(path.as_uri(), "b.h5", md5="f" * 32)
    assert not (home / "b.h5").exists()


@pytest.mark.parametrize("kind", ["sha256", "sha256-prefix", "md5"])
def test_each_kind_of_digest_accepts_the_file_and_refuses_a_tampered_one(home, blob, kind):
    path, data, _ = blob
    digest = {"sha256": lambda b: {"sha256": hashlib.sha256(b).hexdigest()},
              "sha256-prefix": lambda b: {"sha256": hashlib.sha256(b).hexdigest()[:8]},
              "md5": lambda b: {"md5": hashlib.md5(b).hexdigest()}}[kind](data)
    assert hash_kind(**digest) == kind
    assert check_digest(path, **digest) is None
    assert fetch(path.as_uri(), "good.bin", **digest).read_bytes() == data
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 1  # one bit in the middle
    path.write_bytes(bytes(tampered))
    assert kind.split("-")[0] in check_digest(path, **digest)
    with pytest.raises(UsageError, match="does not match the expected"):
        fetch(path.as_uri(), "bad.bin", **digest)
    assert not (home / "bad.bin").exists()


def test_the_strongest_digest_given_is_the_one_checked(home, blob):
    path, data, sha = blob
    md5 = hashlib.md5(data).hexdigest()
    assert hash_kind(sha, md5) == "sha256" and hash_kind(sha[:8], md5) == "sha256-prefix" and hash_kind() == "none"
    wrong_sha = ("0" if sha[0] != "0" else "1") + sha[1:]
    assert check_digest(path, sha256=wrong_sha, md5=md5).startswith("sha256 ")  # a good md5 does not rescue it
    assert check_digest(path, sha256=sha[:12]) is None  # a longer prefix is checked as far as it goes
    assert check_digest(path, sha256=wrong_sha[:8]) is not None
    assert check_digest(path) is None and fetch(path.as_uri(), "unverified.bin").read_bytes() == data
    for bad in [dict(sha256="abc"), dict(sha256="z" * 64), dict(md5="0" * 31)]:
        with pytest.raises(ValueError):
            hash_kind(**bad)


def test_a_bad_cached_file_is_replaced(home, blob, capsys):
    path, data, sha = blob
    home.mkdir(parents=True)
    (home / "w.pth").write_bytes(b"half a download")
    assert fetch(path.as_uri(), "w.pth", sha256=sha).read_bytes() == data
    assert "deleted" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["file:///nonexistent/mobilenets/weights.pth", "http://127.0.0.1:9/weights.pth"])
def test_offline_or_missing_url_is_one_line_naming_url_and_target(home, url):
    with pytest.raises(UsageError) as info:
        fetch(url, "weights.pth", sha256="abcd1234")
    msg = str(info.value)
    assert "\n" not in msg and url in msg
    assert msg.endswith(f"download it by hand and place it at {home / 'weights.pth'}")
    assert not _parts(home) and not (home / "weights.pth").exists()


def test_interrupted_download_leaves_nothing(home, monkeypatch):
    class Broken(io.BytesIO):
        headers = {"Content-Length": "10000000"}

        def read(self, n=-1):
            if self.tell():
                raise ConnectionResetError("connection reset by peer")
            return super().read(1000)
    monkeypatch.setattr(hub.urllib.request, "urlopen", lambda *a, **k: Broken(b"x" * 5000))
    with pytest.raises(UsageError, match="broke off .*place it at"):
        download("https://example.invalid/w.pth", home / "w.pth")
    assert list(home.iterdir()) == []


def test_create_model_pretrained_downloads_verifies_and_converts(home, tmp_path, monkeypatch):
    ref = random_torchvision_v3_small()
    remote = tmp_path / "mobilenet_v3_small-test.pth"
    torch.save(ref.state_dict(), remote)
    sha = hashlib.sha256(remote.read_bytes()).hexdigest()
    entry = sources.WeightSource("mobilenet_v3_small", 1.0, "torchvision.TEST", "torchvision", remote.as_uri(),
                                 remote.name, sha256=sha[:8], top1=1.0, reference="mobilenet_v3_small")
    bad = sources.WeightSource(**{**entry.__dict__, "tag": "torchvision.BAD", "filename": "bad.pth",
                                  "sha256": "ffffffff"})
    monkeypatch.setattr(sources, "SOURCES", (entry, bad))
    model = create_model("mobilenet_v3_small", pretrained=True)
    assert (home / remote.name).is_file() and not _parts(home)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)
    meta = model.checkpoint_meta
    assert meta.extra["source"] == "torchvision.TEST" and meta.extra["url"] == remote.as_uri()
    assert meta.preprocessing.crop_pct == 0.875
    tuned = create_model("mobilenet_v3_small", pretrained="torchvision.TEST", num_classes=10, resolution=160)
    assert tuned.classifier.out_features == 10 and tuned.config.resolution == 160
    with pytest.raises(UsageError, match="sha256 .* does not match the expected ffffffff; the download was deleted"):
        create_model("mobilenet_v3_small", pretrained="torchvision.BAD")
    assert not (home / "bad.pth").exists()


def test_keras_h5_through_the_registry(home, tmp_path, monkeypatch):
    """The Keras path end to end: a legacy .h5 file (as Keras publishes them) behind a file://
    URL, md5-verified, loaded into the Keras application, converted."""
    keras = pytest.importorskip("keras")
    h5py = pytest.importorskip("h5py")
    from keras.src.legacy.saving import legacy_h5_format

    ref = keras.applications.MobileNetV3Small(input_shape=(224, 224, 3), alpha=0.75, weights=None)
    remote = tmp_path / "weights_mobilenet_v3_small_224_0.75_float.h5"
    with h5py.File(remote, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, ref)
    md5 = hashlib.md5(remote.read_bytes()).hexdigest()
    entry = next(s for s in sources.SOURCES if s.format == "keras" and s.filename == remote.name)
    local = sources.WeightSource(**{**entry.__dict__, "url": remote.as_uri(), "md5": md5})
    monkeypatch.setattr(sources, "SOURCES", (local,))

    model = create_model("mobilenet_v3_small_075", pretrained="keras")
    assert model.config.tf_same and (home / remote.name).is_file()
    assert model.checkpoint_meta.preprocessing.mean == (0.5, 0.5, 0.5)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        ours = model(x * 2 - 1).softmax(1)  # Keras V3 rescales [0, 255] to [-1, 1] itself
    theirs = torch.as_tensor(keras.ops.convert_to_numpy(ref(x.permute(0, 2, 3, 1) * 255, training=False)))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
