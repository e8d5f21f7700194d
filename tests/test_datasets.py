"""Data sets: spec parsing, ImageFolder trees (in memory), corrupt files, CIFAR's on-disk format."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets.core.errors import UsageError
from mobilenets.core.preprocessing import cifar
from mobilenets.data.datasets import (
    DataSpec,
    LazyImageFolder,
    collate_skip,
    held_out_split,
    load_data,
    parse_data_spec,
    synthetic,
)
from mobilenets.data.transforms import eval_transform
from mobilenets.train.augment import AugmentConfig, augment, cutout, normalize, pad_crop
from mobilenets.train.batches import alternate_flips, train_batches
from mobilenets.train.distributed import Context


def make_tree(root, classes=("cat", "dog"), n=4, size=32, split="train", seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def test_parse_data_spec():
    assert parse_data_spec("synthetic") == DataSpec("synthetic", None, 512)
    assert parse_data_spec("synthetic:64").size == 64
    assert parse_data_spec("cifar10:/x").kind == "cifar10"
    assert parse_data_spec("folder:/x").path.name == "x"
    for bad in ("imagenet:/x", "synthetic:abc", "cifar10:", "synthetic:1"):
        with pytest.raises(UsageError):
            parse_data_spec(bad)


def test_folder_in_memory_matches_eval_transform(tmp_path):
    make_tree(tmp_path, n=3)
    make_tree(tmp_path, n=2, split="val", seed=1)
    splits = load_data(f"folder:{tmp_path}")
    assert splits.info["storage"] == "memory" and splits.preprocessing.kind == "cifar"
    assert splits.class_names == ["cat", "dog"] and len(splits.train) == 6 and len(splits.val) == 4
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape[1:] == (3, 32, 32)
    # in memory + batched normalisation == the eval transform of predict, per image
    pre = splits.preprocessing
    ref = eval_transform(pre)(Image.open(splits.val.files[0]).convert("RGB"))
    ours = normalize(splits.val.images[:1], pre)[0]
    assert torch.allclose(ours, ref, atol=1e-5)


def test_held_out_split_is_seeded(tmp_path):
    make_tree(tmp_path, n=10)
    a = load_data(f"folder:{tmp_path}", val_size=4, seed=3)
    b = load_data(f"folder:{tmp_path}", val_size=4, seed=3)
    assert len(a.val) == 4 and len(a.train) == 16 and a.val.files == b.val.files
    assert not set(a.val.files) & set(a.train.files)
    assert a.info["val_size"] == 4 and a.info["split_seed"] == 3
    tr, va = held_out_split(100, 0.2, 0)
    assert len(va) == 20 and len(tr) == 80


def test_corrupt_image_skipped_or_strict(tmp_path):
    make_tree(tmp_path, n=3)
    make_tree(tmp_path, n=2, split="val")
    bad = tmp_path / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.warns(UserWarning, match="broken.jpg"):
        splits = load_data(f"folder:{tmp_path}")
    assert len(splits.train) == 6 and [s.path for s in splits.skipped] == [str(bad)]
    with pytest.raises(UsageError, match="broken.jpg"):
        load_data(f"folder:{tmp_path}", strict=True)


def test_folder_errors(tmp_path):
    with pytest.raises(UsageError, match="no such directory"):
        load_data(f"folder:{tmp_path / 'nope'}")
    make_tree(tmp_path, n=2)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(UsageError, match="empty class folder.*empty"):
        load_data(f"folder:{tmp_path}")
    (tmp_path / "train" / "empty").rmdir()
    make_tree(tmp_path, classes=("cat", "bird"), n=1, split="val")
    with pytest.raises(UsageError, match="classes that training lacks: bird"):
        load_data(f"folder:{tmp_path}")


def test_large_images_are_lazy(tmp_path):
    make_tree(tmp_path, n=2, size=100)
    (tmp_path / "train" / "dog" / "bad.jpg").write_bytes(b"xx")
    splits = load_data(f"folder:{tmp_path}", resolution=64, val_size=2)
    assert splits.info["storage"] == "lazy" and splits.preprocessing.kind == "imagenet"
    assert isinstance(splits.train, LazyImageFolder)
    batch = collate_skip([splits.train[i] for i in range(len(splits.train))])
    assert batch[0].shape[1:] == (3, 64, 64) and batch[0].dtype == torch.uint8
    if (tmp_path / "train" / "dog" / "bad.jpg").as_posix() in splits.train.files:
        assert batch[2] and batch[2][0][0].endswith("bad.jpg")


def _write_cifar10(root, batch=None, meta=None, protocol=pickle.DEFAULT_PROTOCOL):
    """A CIFAR-10 folder in torchvision's layout; ``batch(name, n)``/``meta()`` give each file's object."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batch = batch or (lambda name, n: {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                       "labels": list(rng.integers(0, 10, n))})
    meta = meta or (lambda: {"label_names": [f"c{i}" for i in range(10)]})
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 6)]:
        with open(base / name, "wb") as f:
            pickle.dump(batch(name, n), f, protocol=protocol)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump(meta(), f, protocol=protocol)
    return base


def test_cifar_torchvision_format(tmp_path):
    _write_cifar10(tmp_path)
    splits = load_data(f"cifar10:{tmp_path}", download=False)
    assert len(splits.train) == 20 and len(splits.val) == 6 and splits.class_names[3] == "c3"
    assert splits.train.images.shape == (20, 3, 32, 32)
    with pytest.raises(UsageError, match="cifar-100-python"):
        load_data(f"cifar100:{tmp_path}", download=False)


def test_cifar_files_as_cifar_writes_them_load(tmp_path):
    """The real files: protocol 2, bytes keys and names, labels as plain ints, numpy arrays."""
    rng = np.random.default_rng(1)
    images = {}

    def batch(name, n):
        images[name] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        return {b"batch_label": name.encode(), b"labels": [int(y) for y in rng.integers(0, 10, n)],
                b"data": images[name], b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
    _write_cifar10(tmp_path, batch, lambda: {b"num_cases_per_batch": 4, b"label_names": [b"plane", b"car"] + [
        f"c{i}".encode() for i in range(2, 10)], b"num_vis": 3072}, protocol=2)
    splits = load_data(f"cifar10:{tmp_path}", download=False)
    assert splits.class_names[:3] == ["plane", "car", "c2"] and len(splits.train) == 20
    want = torch.from_numpy(images["test_batch"]).view(-1, 3, 32, 32)
    assert torch.equal(splits.val.images, want)


class _Payload:
    """What a crafted CIFAR file would hold: unpickling it runs Python code that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("where", ["test_batch", "batches.meta"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_files_cannot_run_code(tmp_path, where, protocol):
    marker = tmp_path / "pwned"
    rng = np.random.default_rng(0)

    def batch(name, n):
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [0] * n}
        return {**entry, "extra": _Payload(marker)} if name == where else entry

    def meta():
        names = {"label_names": [f"c{i}" for i in range(10)]}
        return {**names, "x": _Payload(marker)} if where == "batches.meta" else names
    base = _write_cifar10(tmp_path / "data", batch, meta, protocol=protocol)
    with pytest.raises(UsageError) as info:
        load_data(f"cifar10:{tmp_path / 'data'}", download=False, train=False)
    msg = str(info.value)
    assert not marker.exists()
    assert "\n" not in msg and str(base / where) in msg and ".exec" in msg


def test_damaged_cifar_files_are_one_line_errors(tmp_path):
    base = _write_cifar10(tmp_path)
    (base / "test_batch").write_bytes(b"\x80\x02}q\x00(X\x04")  # cut short
    with pytest.raises(UsageError, match="test_batch is not a readable CIFAR file"):
        load_data(f"cifar10:{tmp_path}", download=False, train=False)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({"labels": [1, 2]}, f)
    with pytest.raises(UsageError, match="test_batch is not a cifar10 batch"):
        load_data(f"cifar10:{tmp_path}", download=False, train=False)
    (base / "batches.meta").unlink()
    with pytest.raises(UsageError, match="cifar10 file missing: .*batches.meta"):
        load_data(f"cifar10:{tmp_path}", download=False, train=False)


def test_batched_augmentation_is_seeded_and_shaped():
    data = synthetic(16, 4, 32)
    pre = cifar()
    cfg = AugmentConfig(pad_crop=4, flip=True, cutout=8)
    a = augment(data.images, cfg, pre, torch.Generator().manual_seed(1))
    b = augment(data.images, cfg, pre, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == data.images.shape and a.dtype == torch.uint8
    x = torch.full((2, 3, 8, 8), 7, dtype=torch.uint8)
    crop = pad_crop(x, 2, torch.Generator().manual_seed(0))
    assert crop.shape == x.shape and set(crop.unique().tolist()) <= {0, 7}
    holes = cutout(x, 4, torch.Generator().manual_seed(0))
    assert (holes == 0).sum() > 0 and set(holes.unique().tolist()) == {0, 7}
    grey = cutout(x, 4, torch.Generator().manual_seed(0), fill=(1, 2, 3))
    assert torch.equal(grey == 7, holes == 7) and set(grey[:, 2].unique().tolist()) == {3, 7}
    # in a training batch the square is the mean colour, so zero once normalised
    one = AugmentConfig(pad_crop=0, flip=False, cutout=64)  # covers the whole image
    erased = normalize(augment(data.images[:2], one, pre, torch.Generator().manual_seed(0)), pre)
    assert erased.abs().max() < 0.02


def _flip_states(batch, originals) -> dict[int, bool]:
    """{index of the original: whether the batch holds it mirrored}; each image must be one or the other."""
    states = {}
    for x in batch:
        for j, o in enumerate(originals):
            if torch.equal(x, o) or torch.equal(x, o.flip(-1)):
                states[j] = torch.equal(x, o.flip(-1))
                break
        else:
            raise AssertionError("a batch image is neither an original nor its mirror")
    return states


@pytest.mark.parametrize("lazy", [False, True])
def test_alternate_flip_mirrors_each_image_every_other_epoch(tmp_path, lazy):
    if lazy:
        make_tree(tmp_path, n=4, size=16)
        files = sorted(str(p) for p in (tmp_path / "train").rglob("*.png"))
        data = LazyImageFolder(files, [0] * len(files), ["a"], cifar(16), train=False)
        originals = [data[i][0] for i in range(len(data))]
    else:
        data = synthetic(12, 3, 8)
        originals = list(data.images)
    seed, seen = 0, {}
    for epoch in (1, 2, 3):
        (x, _, _), = train_batches(data, batch_size=len(data), seed=seed, epoch=epoch, ctx=Context(),
                                   flip="alternate", workers=0)
        states = _flip_states(x, originals)
        seen[epoch] = [states[j] for j in range(len(data))]
        assert seen[epoch] == alternate_flips(len(data), seed, epoch).tolist()
    assert all(a != b for a, b in zip(seen[1], seen[2], strict=True)) and seen[1] == seen[3]
    assert 0 < sum(seen[1]) < len(data)
