"""fastcifar.core.data on small generated datasets: reading, provenance, errors, splits and loaders (CPU)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_cifar, signal_when_ready
from fastcifar.core import data
from fastcifar.core.data import DataError, GpuLoader, Split

CPU = torch.device("cpu")
MEAN, STD = data.CIFAR10_MEAN, data.CIFAR10_STD


def hwc(rows: np.ndarray) -> np.ndarray:
    """Official rows (N, 3072: R plane, G plane, B plane) -> (N, 32, 32, 3)."""
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def unique_split(n: int, seed: int = 0) -> Split:
    """Random images whose label is their index, so a loader's output can be traced to its source."""
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n, dtype=np.int64))


def raw(x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """Undo a loader's normalisation, back to 0..255 values (float)."""
    return x * (torch.tensor(std).view(1, 3, 1, 1) * 255) + torch.tensor(mean).view(1, 3, 1, 1) * 255


# ---------------------------------------------------------------- load_cifar


def test_load_cifar10_shapes_labels_classes(cifar10_any):
    gen = cifar10_any
    ds = data.load_cifar("cifar10", gen.base)
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.folder == gen.folder
    assert ds.train.images.shape == (100, 32, 32, 3) and ds.train.images.dtype == np.uint8
    assert ds.test.images.shape == (20, 32, 32, 3) and ds.test.images.dtype == np.uint8
    assert ds.train.labels.dtype == np.int64 and ds.test.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.train.labels, gen.train_labels)
    np.testing.assert_array_equal(ds.test.labels, gen.test_labels)
    assert ds.classes == gen.classes
    assert all(isinstance(c, str) for c in ds.classes)
    np.testing.assert_array_equal(ds.train.images, hwc(gen.train_data))
    np.testing.assert_array_equal(ds.test.images, hwc(gen.test_data))


def test_load_cifar100_shapes_labels_classes(cifar100_any):
    gen = cifar100_any
    ds = data.load_cifar("cifar100", gen.base)
    assert ds.num_classes == 100 and ds.layout.label_key == "fine_labels"
    assert ds.train.images.shape == (200, 32, 32, 3) and ds.train.images.dtype == np.uint8
    assert ds.test.images.shape == (100, 32, 32, 3)
    assert ds.train.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.train.labels, gen.train_labels)  # fine labels, not coarse ones
    assert ds.train.labels.max() == 99
    assert ds.classes == gen.classes
    np.testing.assert_array_equal(ds.test.images, hwc(gen.test_data))


def test_pixel_order_red_plane_comes_first(cifar10_str):
    ds = data.load_cifar("cifar10", cifar10_str.base)
    rows = cifar10_str.train_data
    for i in (0, 37, 99):
        np.testing.assert_array_equal(ds.train.images[i, :, :, 0], rows[i, :1024].reshape(32, 32))
        np.testing.assert_array_equal(ds.train.images[i, :, :, 1], rows[i, 1024:2048].reshape(32, 32))
        np.testing.assert_array_equal(ds.train.images[i, :, :, 2], rows[i, 2048:].reshape(32, 32))
    # row-major inside a plane: value 5 of the red plane is pixel (0, 5), value 32 is pixel (1, 0)
    assert ds.train.images[0, 0, 5, 0] == rows[0, 5]
    assert ds.train.images[0, 1, 0, 0] == rows[0, 32]


def test_str_and_bytes_keys_read_the_same(cifar_factory):
    a = data.load_cifar("cifar10", cifar_factory("cifar10", "str").base)
    b = data.load_cifar("cifar10", cifar_factory("cifar10", "bytes").base)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert a.classes == b.classes


def test_missing_meta_falls_back_to_numbered_classes(cifar10_str):
    (cifar10_str.folder / "batches.meta").unlink()
    ds = data.load_cifar("cifar10", cifar10_str.base)
    assert ds.classes == [str(i) for i in range(10)]


def test_data_dir_from_env(cifar10_str, monkeypatch):
    monkeypatch.setenv("FASTCIFAR_DATA", str(cifar10_str.base))
    assert data.load_cifar("cifar10").folder == cifar10_str.folder


# ---------------------------------------------------------------- provenance


SOURCE_RE = re.compile(r"sha256:([0-9a-f]{12})$")


def test_provenance_non_official_with_fingerprint(cifar10_any):
    ds = data.load_cifar("cifar10", cifar10_any.base)
    assert ds.source.startswith("cifar10 ")
    assert "non-official" in ds.source
    assert "official (md5 ok)" not in ds.source
    assert SOURCE_RE.search(ds.source), ds.source


def test_provenance_cifar100(cifar100_str):
    ds = data.load_cifar("cifar100", cifar100_str.base)
    assert ds.source.startswith("cifar100 non-official") and SOURCE_RE.search(ds.source)


def test_fingerprint_depends_on_content_not_on_file_format(cifar_factory):
    a = data.load_cifar("cifar10", cifar_factory("cifar10", "str").base).source
    b = data.load_cifar("cifar10", cifar_factory("cifar10", "bytes").base).source
    assert SOURCE_RE.search(a).group(1) == SOURCE_RE.search(b).group(1)


def test_fingerprint_changes_when_one_pixel_changes(cifar_factory, pickle_writer):
    gen = cifar_factory("cifar10")
    before = SOURCE_RE.search(data.load_cifar("cifar10", gen.base).source).group(1)
    entry = dict(gen.files["data_batch_3"])
    entry["data"] = entry["data"].copy()
    entry["data"][7, 1500] ^= 1
    pickle_writer(gen.folder / "data_batch_3", entry)
    after = SOURCE_RE.search(data.load_cifar("cifar10", gen.base).source).group(1)
    assert before != after


def test_fingerprint_changes_when_one_label_changes(cifar_factory, pickle_writer):
    gen = cifar_factory("cifar10")
    before = SOURCE_RE.search(data.load_cifar("cifar10", gen.base).source).group(1)
    entry = dict(gen.files["test_batch"])
    entry["labels"] = [(entry["labels"][0] + 1) % 10, *entry["labels"][1:]]
    pickle_writer(gen.folder / "test_batch", entry)
    after = SOURCE_RE.search(data.load_cifar("cifar10", gen.base).source).group(1)
    assert before != after


def test_provenance_quotes_source_note(cifar10_str):
    (cifar10_str.folder / "SOURCE.txt").write_text("rebuilt from the JPEG copy.\n")
    ds = data.load_cifar("cifar10", cifar10_str.base)
    assert "non-official (md5 differs); rebuilt from the JPEG copy;" in ds.source


# ---------------------------------------------------------------- errors


def test_unknown_dataset_name_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="cifar10"):
        data.load_cifar("mnist", tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError) as info:
        data.load_cifar("cifar10", tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert "python -m fastcifar.data --download cifar10" in msg and "FASTCIFAR_DATA" in msg and "make data" in msg


def test_missing_folder_cifar100_names_its_folder(tmp_path):
    with pytest.raises(DataError, match="cifar-100-python"):
        data.load_cifar("cifar100", tmp_path)


def test_missing_one_batch_file(cifar10_str):
    (cifar10_str.folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as info:
        data.load_cifar("cifar10", cifar10_str.base)
    msg = str(info.value)
    assert "missing file" in msg and "data_batch_3" in msg
    assert "FASTCIFAR_DATA" in msg


@pytest.mark.parametrize("fname", ["data_batch_2", "test_batch", "batches.meta"])
def test_truncated_pickle(cifar10_any, fname):
    path = cifar10_any.folder / fname
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as info:
        data.load_cifar("cifar10", cifar10_any.base)
    msg = str(info.value)
    assert "damaged" in msg and fname in msg
    assert isinstance(info.value.__cause__, Exception)


def test_not_a_pickle_at_all(cifar10_str):
    (cifar10_str.folder / "data_batch_1").write_text("<html>404 Not Found</html>")
    with pytest.raises(DataError, match="damaged"):
        data.load_cifar("cifar10", cifar10_str.base)


def test_pickle_of_a_list_is_rejected(cifar10_str):
    import pickle

    (cifar10_str.folder / "data_batch_1").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="expected a dict"):
        data.load_cifar("cifar10", cifar10_str.base)


@pytest.mark.parametrize("keys", ["str", "bytes"])
def test_wrong_shape_of_data(cifar_factory, pickle_writer, keys):
    gen = cifar_factory("cifar10", keys)
    entry = dict(gen.files["data_batch_1"])
    entry["data"] = np.zeros((20, 100), np.uint8)
    pickle_writer(gen.folder / "data_batch_1", entry, keys)
    with pytest.raises(DataError) as info:
        data.load_cifar("cifar10", gen.base)
    msg = str(info.value)
    assert "(20, 100)" in msg and "3072" in msg and "data_batch_1" in msg


def test_wrong_dtype_of_data(cifar10_str, pickle_writer):
    entry = dict(cifar10_str.files["data_batch_1"])
    entry["data"] = entry["data"].astype(np.float32)
    pickle_writer(cifar10_str.folder / "data_batch_1", entry)
    with pytest.raises(DataError, match="float32"):
        data.load_cifar("cifar10", cifar10_str.base)


def test_missing_label_key(cifar100_str, pickle_writer):
    entry = dict(cifar100_str.files["train"])
    del entry["fine_labels"]
    pickle_writer(cifar100_str.folder / "train", entry)
    with pytest.raises(DataError, match="fine_labels"):
        data.load_cifar("cifar100", cifar100_str.base)


@pytest.mark.parametrize("bad", [10, -1])
def test_labels_out_of_range(cifar10_str, pickle_writer, bad):
    entry = dict(cifar10_str.files["data_batch_4"])
    entry["labels"] = [*entry["labels"][:-1], bad]
    pickle_writer(cifar10_str.folder / "data_batch_4", entry)
    with pytest.raises(DataError) as info:
        data.load_cifar("cifar10", cifar10_str.base)
    assert "outside 0..9" in str(info.value) and "data_batch_4" in str(info.value)


def test_cifar100_label_out_of_range(cifar100_bytes, pickle_writer):
    entry = dict(cifar100_bytes.files["test"])
    entry["fine_labels"] = [*entry["fine_labels"][:-1], 100]
    pickle_writer(cifar100_bytes.folder / "test", entry, "bytes")
    with pytest.raises(DataError, match="outside 0..99"):
        data.load_cifar("cifar100", cifar100_bytes.base)


def test_label_count_mismatch(cifar10_str, pickle_writer):
    entry = dict(cifar10_str.files["test_batch"])
    entry["labels"] = entry["labels"][:-1]
    pickle_writer(cifar10_str.folder / "test_batch", entry)
    with pytest.raises(DataError) as info:
        data.load_cifar("cifar10", cifar10_str.base)
    assert "20 images but 19 labels" in str(info.value)


# ---------------------------------------------------------------- download (offline)


def test_download_failure_is_a_data_error_and_leaves_nothing(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    calls = []

    def failing(url, download_root, filename=None, md5=None, **kwargs):
        calls.append(url)
        root = os.fspath(download_root)
        with open(os.path.join(root, filename), "wb") as f:  # a partial archive ...
            f.write(b"\x1f\x8b partial")
        os.makedirs(os.path.join(root, "cifar-10-batches-py"))  # ... and a partial extraction
        raise OSError("Network is unreachable")

    monkeypatch.setattr(tvu, "download_and_extract_archive", failing)
    base = tmp_path / "fresh" / "data"
    with pytest.raises(DataError) as info:
        data.download_cifar("cifar10", base)
    msg = str(info.value)
    assert "download" in msg and "failed" in msg and "Network is unreachable" in msg
    assert isinstance(info.value.__cause__, OSError)
    assert calls and calls[0].startswith("http")
    assert not base.exists()  # the data folder it made for the download is removed with it


def test_load_with_download_reports_failure(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def failing(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(tvu, "download_and_extract_archive", failing)
    with pytest.raises(DataError, match="failed") as info:
        data.load_cifar("cifar100", tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []
    assert "make data" not in str(info.value)  # it rebuilds CIFAR-10 only
    with pytest.raises(DataError):
        data.load_cifar("cifar100", tmp_path / "new", download=True)
    assert not (tmp_path / "new").exists()  # the folder the failed download made is gone


def test_download_success_moves_folder_into_place(tmp_path, monkeypatch, cifar_factory):
    import torchvision.datasets.utils as tvu

    def fake(url, download_root, filename=None, md5=None, **kwargs):
        cifar_factory("cifar10", base=Path(download_root))

    monkeypatch.setattr(tvu, "download_and_extract_archive", fake)
    ds = data.load_cifar("cifar10", tmp_path, download=True)
    assert ds.folder == tmp_path / "cifar-10-batches-py"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py"]  # temp folder gone
    assert len(ds.train) == 100


# ---------------------------------------------------------------- stratified_split / make_splits


def test_stratified_split_sizes_disjoint_cover():
    labels = np.arange(200) % 10
    train, val = data.stratified_split(labels, n_val=40, seed=1)
    assert len(val) == 40 and len(train) == 160
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(200))
    assert np.all(np.diff(val) > 0) and np.all(np.diff(train) > 0)
    np.testing.assert_array_equal(np.bincount(labels[val], minlength=10), [4] * 10)


def test_stratified_split_is_proportional_for_unequal_classes():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    rng = np.random.default_rng(3)
    labels = labels[rng.permutation(len(labels))]
    _, val = data.stratified_split(labels, n_val=10, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[val], minlength=3), [5, 3, 2])
    _, val = data.stratified_split(labels, n_val=15, seed=0)  # 7.5, 4.5, 3 -> largest remainders
    counts = np.bincount(labels[val], minlength=3)
    assert tuple(counts) in {(8, 4, 3), (7, 5, 3)}


def test_stratified_split_seed():
    labels = np.arange(300) % 10
    a = data.stratified_split(labels, 50, seed=7)
    b = data.stratified_split(labels, 50, seed=7)
    c = data.stratified_split(labels, 50, seed=8)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("n_val", [0, 100, -3])
def test_stratified_split_rejects_bad_sizes(n_val):
    with pytest.raises(ValueError):
        data.stratified_split(np.arange(100) % 10, n_val=n_val)


def test_make_splits_default_and_limits(cifar10_str):
    ds = data.load_cifar("cifar10", cifar10_str.base)
    s = data.make_splits(ds, n_val=20, seed=0)
    assert len(s.train) == 80 and len(s.val) == 20 and len(s.test) == 20
    np.testing.assert_array_equal(np.bincount(s.val.labels, minlength=10), [2] * 10)
    assert s.mean == data.CIFAR10_MEAN and s.std == data.CIFAR10_STD
    assert s.classes == ds.classes and s.source == ds.source
    # validation comes from the training images, never from the test set
    train_rows = {img.tobytes() for img in ds.train.images}
    assert all(img.tobytes() in train_rows for img in s.val.images)
    assert not {img.tobytes() for img in s.val.images} & {img.tobytes() for img in s.train.images}

    lim = data.make_splits(ds, n_val=20, seed=0, train_limit=30, eval_limit=7)
    assert len(lim.train) == 30 and len(lim.val) == 7 and len(lim.test) == 7
    np.testing.assert_array_equal(lim.test.images, ds.test.images[:7])
    np.testing.assert_array_equal(lim.val.images, s.val.images[:7])
    full_train = {img.tobytes() for img in s.train.images}
    assert all(img.tobytes() in full_train for img in lim.train.images)
    assert len({img.tobytes() for img in lim.train.images}) == 30
    again = data.make_splits(ds, n_val=20, seed=0, train_limit=30, eval_limit=7)
    np.testing.assert_array_equal(again.train.labels, lim.train.labels)
    np.testing.assert_array_equal(again.train.images, lim.train.images)


def test_make_splits_cifar100_uses_its_statistics(cifar100_str):
    s = data.make_splits(data.load_cifar("cifar100", cifar100_str.base), n_val=100, eval_limit=1000)
    assert s.mean == data.CIFAR100_MEAN and s.std == data.CIFAR100_STD
    assert len(s.val) == 100 and len(s.test) == 100  # eval_limit above the size: everything
    np.testing.assert_array_equal(np.bincount(s.val.labels, minlength=100), [1] * 100)


# ---------------------------------------------------------------- to_tensor / denormalise


def test_to_tensor_values_and_layout():
    split = unique_split(4)
    x = data.to_tensor(split.images, CPU, MEAN, STD)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    expected = (split.images[1, 2, 3, 0] / 255 - MEAN[0]) / STD[0]
    assert x[1, 0, 2, 3].item() == pytest.approx(expected, abs=1e-5)
    xc = data.to_tensor(split.images, CPU, MEAN, STD, channels_last=True)
    assert xc.is_contiguous(memory_format=torch.channels_last) and not xc.is_contiguous()
    torch.testing.assert_close(x, xc)


def test_denormalise_round_trip():
    split = unique_split(8)
    split.images[0] = 0
    split.images[1] = 255
    back = data.denormalise(data.to_tensor(split.images, CPU, MEAN, STD), MEAN, STD)
    assert back.dtype == np.uint8 and back.shape == split.images.shape
    assert np.abs(back.astype(int) - split.images.astype(int)).max() <= 1


# ---------------------------------------------------------------- GpuLoader on CPU


def test_loader_train_batches_drop_last():
    split = unique_split(100)
    loader = GpuLoader(split, 32, CPU, MEAN, STD, train=True, seed=0)
    assert len(loader) == 3
    batches = list(loader)
    assert len(batches) == 3
    seen = []
    for x, y in batches:
        assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32
        assert y.shape == (32,) and y.dtype == torch.int64
        seen.extend(y.tolist())
    assert len(set(seen)) == 96  # no repeats within an epoch, 4 dropped
    assert seen != sorted(seen)  # shuffled


def test_loader_train_reshuffles_each_epoch():
    loader = GpuLoader(unique_split(64), 16, CPU, MEAN, STD, train=True, seed=0)
    first = torch.cat([y for _, y in loader]).tolist()
    second = torch.cat([y for _, y in loader]).tolist()
    assert sorted(first) == sorted(second) == list(range(64))
    assert first != second


def test_loader_eval_covers_every_image_once_in_order():
    split = unique_split(100)
    loader = GpuLoader(split, 32, CPU, MEAN, STD, train=False)
    assert len(loader) == 4
    batches = list(loader)
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    labels = torch.cat([y for _, y in batches])
    assert labels.tolist() == list(range(100))
    x = torch.cat([x for x, _ in batches])
    torch.testing.assert_close(x, data.to_tensor(split.images, CPU, MEAN, STD), atol=1e-5, rtol=1e-5)


def test_loader_eval_is_deterministic():
    split = unique_split(10)
    a = [x for x, _ in GpuLoader(split, 4, CPU, MEAN, STD, train=False, cutout=8, seed=1)]
    b = [x for x, _ in GpuLoader(split, 4, CPU, MEAN, STD, train=False, cutout=8, seed=2)]
    for xa, xb in zip(a, b):
        torch.testing.assert_close(xa, xb, atol=0, rtol=0)  # no augmentation in eval mode, cutout included


def test_loader_rejects_empty_split():
    with pytest.raises(ValueError):
        GpuLoader(Split(np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64)), 4, CPU, MEAN, STD, True)


def test_crop_is_shifted_copy_with_zero_border():
    split = unique_split(48, seed=5)
    split.images[:] = np.maximum(split.images, 1)  # so the zero border is unambiguous
    loader = GpuLoader(split, 16, CPU, MEAN, STD, train=True, padding=4, flip=False, seed=3)
    padded = np.pad(split.images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    shifts = set()
    for x, y in loader:
        assert x.shape == (16, 3, 32, 32)
        pix = raw(x).round().permute(0, 2, 3, 1).numpy().astype(np.int64)
        for out, label in zip(pix, y.tolist()):
            matches = [(dy, dx) for dy in range(9) for dx in range(9)
                       if np.array_equal(out, padded[label, dy:dy + 32, dx:dx + 32])]
            assert len(matches) == 1, f"image {label} is no shifted copy of its source"
            dy, dx = matches[0]
            shifts.add(matches[0])
            border = np.ones((32, 32), bool)
            border[max(0, 4 - dy):32 - max(0, dy - 4), max(0, 4 - dx):32 - max(0, dx - 4)] = False
            assert np.all(out[border] == 0) and np.all(out[~border] > 0)
    assert len(shifts) > 5  # offsets vary, so crops really are random
    assert any(s != (4, 4) for s in shifts)


def test_flip_flips_some_images():
    split = unique_split(64, seed=2)
    loader = GpuLoader(split, 64, CPU, MEAN, STD, train=True, padding=0, flip=True, seed=0)
    x, y = next(iter(loader))
    pix = raw(x).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    flipped = kept = 0
    for out, label in zip(pix, y.tolist()):
        src = split.images[label]
        if np.array_equal(out, src):
            kept += 1
        elif np.array_equal(out, src[:, ::-1]):
            flipped += 1
        else:
            pytest.fail(f"image {label} is neither the source nor its mirror")
    assert flipped > 0 and kept > 0 and flipped + kept == 64


def test_no_flip_no_padding_is_identity():
    split = unique_split(20)
    loader = GpuLoader(split, 20, CPU, MEAN, STD, train=True, padding=0, flip=False, seed=0)
    x, y = next(iter(loader))
    torch.testing.assert_close(x, data.to_tensor(split.images[y.numpy()], CPU, MEAN, STD), atol=1e-5, rtol=1e-5)


def zero_boxes(x: torch.Tensor):
    """For each normalised image, the bounding box (y0, y1, x0, x1) of its all-channel zeros."""
    boxes = []
    for img in x:
        zero = (img == 0)
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2]), "cutout must hit every channel"
        ys, xs = torch.nonzero(zero[0], as_tuple=True)
        if len(ys) == 0:
            boxes.append(None)
            continue
        y0, y1, x0, x1 = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
        assert zero[0, y0:y1, x0:x1].all() and zero[0].sum().item() == (y1 - y0) * (x1 - x0), "not a filled box"
        boxes.append((y0, y1, x0, x1))
    return boxes


def test_cutout_zeroes_a_square():
    split = unique_split(64, seed=4)
    loader = GpuLoader(split, 64, CPU, MEAN, STD, train=True, padding=0, flip=False, cutout=9, seed=0)
    x, y = next(iter(loader))
    boxes = zero_boxes(x)
    assert all(b is not None for b in boxes)
    inner = [b for b in boxes if b[0] > 0 and b[1] < 32 and b[2] > 0 and b[3] < 32]
    assert inner, "expected some holes away from the border"
    for y0, y1, x0, x1 in inner:
        assert y1 - y0 == x1 - x0 == 9
    for y0, y1, x0, x1 in boxes:  # clipped at the border, never bigger
        assert y1 - y0 <= 9 and x1 - x0 <= 9
    # outside the hole the image is untouched
    ref = data.to_tensor(split.images[y.numpy()], CPU, MEAN, STD)
    keep = x != 0
    torch.testing.assert_close(x[keep], ref[keep], atol=1e-5, rtol=1e-5)


def test_cutout_even_size_is_exact():
    loader = GpuLoader(unique_split(64, seed=4), 64, CPU, MEAN, STD, train=True, padding=0, flip=False,
                       cutout=8, seed=0)
    x, _ = next(iter(loader))
    inner = [b for b in zero_boxes(x) if b and b[0] > 0 and b[1] < 32 and b[2] > 0 and b[3] < 32]
    assert inner and all(y1 - y0 == 8 and x1 - x0 == 8 for y0, y1, x0, x1 in inner)


def test_no_cutout_means_no_zeros():
    x, _ = next(iter(GpuLoader(unique_split(32), 32, CPU, MEAN, STD, train=True, padding=0, cutout=0)))
    assert all(b is None for b in zero_boxes(x))


@pytest.mark.parametrize("train", [True, False])
def test_channels_last_output(train):
    loader = GpuLoader(unique_split(20), 8, CPU, MEAN, STD, train=train, channels_last=True)
    x, _ = next(iter(loader))
    assert x.shape == (8, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    plain, _ = next(iter(GpuLoader(unique_split(20), 8, CPU, MEAN, STD, train=train)))
    assert plain.is_contiguous()


def test_loader_same_seed_same_batches():
    split = unique_split(40)
    a = [(x, y) for x, y in GpuLoader(split, 8, CPU, MEAN, STD, train=True, cutout=6, seed=11)]
    b = [(x, y) for x, y in GpuLoader(split, 8, CPU, MEAN, STD, train=True, cutout=6, seed=11)]
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


# ---------------------------------------------------------------- torchvision path


def test_torchvision_split_and_transform():
    split = unique_split(6)
    train_ds = data.TorchvisionSplit(split, data.torchvision_transform(True))
    test_ds = data.TorchvisionSplit(split, data.torchvision_transform(False))
    assert len(train_ds) == 6
    x, y = train_ds[2]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32) and y == 2 and isinstance(y, int)
    x, y = test_ds[3]
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x, data.to_tensor(split.images[3:4], CPU, MEAN, STD)[0], atol=1e-5, rtol=1e-5)
    img, label = data.TorchvisionSplit(split)[1]
    assert img.size == (32, 32) and np.array_equal(np.asarray(img), split.images[1]) and label == 1
    rot = data.TorchvisionSplit(split, data.torchvision_transform(True, rotation=10))
    assert rot[0][0].shape == (3, 32, 32)


def test_torchvision_batch1_dataloader():
    split = unique_split(5)
    ds = data.TorchvisionSplit(split, data.torchvision_transform(False, data.CIFAR100_MEAN, data.CIFAR100_STD))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=False, num_workers=0)
    batches = list(loader)
    assert len(batches) == 5
    for i, (x, y) in enumerate(batches):
        assert x.shape == (1, 3, 32, 32) and y.tolist() == [i]
    torch.testing.assert_close(batches[4][0], data.to_tensor(split.images[4:5], CPU, data.CIFAR100_MEAN,
                                                             data.CIFAR100_STD), atol=1e-5, rtol=1e-5)


def test_splits_for_follows_the_profile_and_tensors_are_normalised(cifar10_str):
    from types import SimpleNamespace

    from fastcifar.core import env

    smoke = SimpleNamespace(data_dir=cifar10_str.base, profile=env.Profile("smoke", 30, 7, 1, 1, 2, False, 1))
    splits = data.splits_for(smoke, seed=0, n_val=20)
    assert len(splits.train) == 30 and len(splits.val) == 7 and len(splits.test) == 7
    images, labels = splits.tensors("val", "cpu")
    assert images.shape == (7, 3, 32, 32) and labels.dtype == torch.int64
    assert torch.allclose(images, data.to_tensor(splits.val.images, "cpu", splits.mean, splits.std))


# ---------------------------------------------------------------- restricted unpickling

class _RunsACommand:
    """Pickles as a call of `function(*args)`: what a crafted data file would use to run code."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_pickle_that_would_run_a_command_is_refused_and_does_not_run(cifar10_str, tmp_path, protocol):
    import pickle
    import shlex
    import sys

    marker = tmp_path / "marker-created"
    command = f"{shlex.quote(sys.executable)} -c \"open({str(marker)!r}, 'w').close()\""
    entry = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "x": _RunsACommand(os.system, command)}
    (cifar10_str.folder / "data_batch_1").write_bytes(pickle.dumps(entry, protocol=protocol))
    with pytest.raises(DataError, match="system"):
        data.load_cifar("cifar10", cifar10_str.base)
    assert not marker.exists()
    # The same payload through plain pickle does run: the test would notice if it could not.
    pickle.loads(pickle.dumps(_RunsACommand(os.system, command), protocol=protocol))
    assert marker.exists()


@pytest.mark.parametrize("callable_", [eval, getattr, __import__])
def test_builtins_are_refused(cifar10_str, callable_):
    import pickle

    (cifar10_str.folder / "test_batch").write_bytes(pickle.dumps({"x": _RunsACommand(callable_, "1")}))
    with pytest.raises(DataError, match="not a CIFAR pickle"):
        data.load_cifar("cifar10", cifar10_str.base)


def test_codecs_encode_admits_only_latin1(cifar10_str):
    import _codecs
    import pickle

    (cifar10_str.folder / "test_batch").write_bytes(pickle.dumps({"x": _RunsACommand(_codecs.encode, "abc", "rot13")}))
    with pytest.raises(DataError, match="not admitted"):
        data.load_cifar("cifar10", cifar10_str.base)


def test_a_module_that_does_not_exist_is_a_data_error(cifar10_str):
    # GLOBAL 'no_such_module thing', empty tuple, REDUCE, STOP (protocol 0 opcodes)
    (cifar10_str.folder / "data_batch_5").write_bytes(b"cno_such_module\nthing\n(tR.")
    with pytest.raises(DataError, match="no_such_module"):
        data.load_cifar("cifar10", cifar10_str.base)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_contents_load_with_every_protocol(cifar10_str, protocol):
    """Arrays, numpy scalars and numpy label arrays, as other writers of the layout produce them."""
    import pickle

    entry = dict(cifar10_str.files["data_batch_2"])
    entry["labels"] = np.asarray(entry["labels"], dtype=np.int64)
    entry["count"] = np.int64(len(entry["labels"]))
    (cifar10_str.folder / "data_batch_2").write_bytes(pickle.dumps(entry, protocol=protocol))
    loaded = data.load_cifar("cifar10", cifar10_str.base)
    assert np.array_equal(loaded.train.images, hwc(cifar10_str.train_data))
    assert np.array_equal(loaded.train.labels, cifar10_str.train_labels)


def test_fuzzed_files_only_ever_raise_data_error(cifar10_any):
    """Random byte changes and cuts of a real file: whatever breaks, it is reported as DataError."""
    path = cifar10_any.folder / "test_batch"
    blob = path.read_bytes()
    rng = np.random.default_rng(0)
    failures = set()
    for _ in range(300):
        mutated = bytearray(blob)
        for pos in rng.integers(0, len(blob), rng.integers(1, 4)):
            mutated[pos] = rng.integers(0, 256)
        path.write_bytes(bytes(mutated[: rng.integers(len(blob) // 2, len(blob) + 1)]))
        try:
            data.load_cifar("cifar10", cifar10_any.base)
        except DataError as exc:
            failures.add(type(exc.__cause__).__name__ if exc.__cause__ else "check")
    assert failures  # most mutations break the file; none may escape as another exception type


# ---------------------------------------------------------------- interrupted rebuilds

SLOW_REBUILD = '''
import pathlib, sys, time
dest = pathlib.Path(sys.argv[1]) / "cifar-10-batches-py"
dest.mkdir(parents=True)
(dest / "data_batch_1").write_bytes(b"x" * 1000)
time.sleep(60)
'''


def test_sigterm_during_a_rebuild_leaves_no_work_folder(tmp_path):
    import signal
    import subprocess
    import sys

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "make_cifar10_batches.py").write_text(SLOW_REBUILD)
    base = tmp_path / "data"
    lib = str(Path(data.__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, "-m", "fastcifar.data", "--from-shared", str(shared), "--data-dir", str(base)],
                            env={**os.environ, "PYTHONPATH": lib}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = signal_when_ready(proc, lambda: list(base.glob(".rebuild-*/cifar-10-batches-py/data_batch_1")),
                            signal.SIGTERM)
    assert proc.returncode == 143 and "Traceback" not in err.decode()
    assert "stopped by signal SIGTERM; the half-built folder was removed" in err.decode().strip().splitlines()[-1]
    assert not data.stale_work_folders(base) and not (base / "cifar-10-batches-py").exists()


def test_stale_work_folders_are_removed_before_a_rebuild(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "make_cifar10_batches.py").write_text(
        "import pathlib, sys\n(pathlib.Path(sys.argv[1]) / 'cifar-10-batches-py').mkdir()\n")
    base = tmp_path / "data"
    for stale in (".rebuild-abc", ".download-xyz"):
        (base / stale).mkdir(parents=True)
        (base / stale / "big").write_bytes(b"x" * 100)
    (base / "rebuild-notes").mkdir()  # not ours: kept
    assert [p.name for p in data.stale_work_folders(base)] == [".download-xyz", ".rebuild-abc"]
    data.rebuild_from_shared(shared, base)
    assert not data.stale_work_folders(base) and (base / "rebuild-notes").is_dir()
    assert (base / "cifar-10-batches-py").is_dir()


def test_the_data_command_reports_mistakes_in_one_line(tmp_path, capsys):
    def said() -> str:
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, err
        return err

    assert data.main(["--from-shared", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path / "d")]) == 2
    assert "make_cifar10_batches.py" in said()
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "make_cifar10_batches.py").write_text("import sys, pathlib\n(pathlib.Path(sys.argv[1]) / 'x').write_text('')\n")
    assert data.main(["--from-shared", str(shared), "--data-dir", str(a_file)]) == 2
    assert "expected a data folder this user can read and write" in said()
    # a folder that is there but damaged is not taken as built
    make_cifar(tmp_path / "damaged", "cifar10")
    (tmp_path / "damaged" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x04garbage")
    assert data.main(["--from-shared", str(shared), "--data-dir", str(tmp_path / "damaged")]) == 2
    assert "is there but cannot be read: remove it" in said()
