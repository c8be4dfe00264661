"""The predictor and `fastcifar predict`: images as people have them (sizes, greyscale, palette, alpha,
16-bit, EXIF rotation), bad inputs refused in one line naming the file, predictions identical to the
model's on the same pixels, the command's output and exit codes, J5's e2e rows, grid and confusion
matrix. On the CPU, with a small FastNet checkpoint written here (and the committed final model on the
CIFAR-10 test set where both exist); the CUDA graph path is marked `gpu`."""
from __future__ import annotations

import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fastcifar import cli
from fastcifar.core import data, engine, env, graphs, optimize
from fastcifar.core.kernels.samples import random_fastnet
from fastcifar.series import notebook_params, predict
from fastcifar.series.predict import ImageError, Predictor

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FINAL = env.project_root() / "outputs" / "final_model.pt"
CUDA = torch.cuda.is_available()


def on_gpu(test):
    return pytest.mark.gpu(pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (make test-gpu)")(test))


def write_checkpoint(path, spec=None, classes=CLASSES):
    model = random_fastnet((16, 32, 32), 2)
    extra = {"spec": spec, "mean": list(data.CIFAR10_MEAN), "std": list(data.CIFAR10_STD), "classes": classes}
    engine.save_checkpoint(path, model, "fastnet", 10, **{k: v for k, v in extra.items() if v is not None})
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "final_model.pt"
    write_checkpoint(path, optimize.Spec("fp16", cuda_graph=True).to_dict())
    return path


@pytest.fixture
def said():
    return []


@pytest.fixture
def predictor(checkpoint, said):
    return Predictor.load(checkpoint, device="cpu", say=said.append)


def random_images(n, h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def model_on(model, images, mirror=False):
    """What the FP32 model computes for these uint8 HWC pixels, one image at a time."""
    fn = optimize.with_mirror(model) if mirror else model
    with torch.inference_mode():
        return np.stack([fn(data.to_tensor(img[None], "cpu", data.CIFAR10_MEAN, data.CIFAR10_STD))[0].numpy()
                         for img in images])


def png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG (RGB when values is HxWx3, grey when HxW) written by hand: PIL writes no 16-bit RGB."""
    h, w = values.shape[:2]
    colour = 2 if values.ndim == 3 else 0
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- predictions on the same pixels

def test_png_files_give_exactly_the_models_predictions_on_the_same_pixels(tmp_path, checkpoint, predictor):
    model, _ = engine.load_model(checkpoint)
    images = random_images(12)
    paths = []
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    logits = model_on(model, images)
    got = predictor.many(paths)
    assert [p.class_id for p in got] == list(logits.argmax(1))
    for p, want in zip(got, logits):
        assert np.array_equal(p.probabilities, predict.softmax(want))
        assert p.name == CLASSES[p.class_id] and p.probability == p.probabilities[p.class_id]
        assert abs(p.probabilities.sum() - 1) < 1e-12 and p.model_ms > 0
    # a file, a PIL image and the array itself are the same input
    assert predictor(Image.open(paths[3])).class_id == predictor(images[3]).class_id == got[3].class_id


@pytest.mark.skipif(not FINAL.is_file(), reason="no committed final model")
def test_the_committed_final_model_on_test_images_written_as_png(tmp_path, said):
    try:
        cifar = data.load_cifar("cifar10")
    except data.DataError as exc:
        pytest.skip(f"no CIFAR-10 here ({exc})")
    images, labels = cifar.test.images[:40], cifar.test.labels[:40]
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"{i:02d}.png")
    predictor = Predictor.load(FINAL, device="cpu", say=said.append)
    model, ckpt = engine.load_model(FINAL)
    want = model_on(model, images, mirror=bool((ckpt.get("spec") or {}).get("mirror")))
    got = predictor.many(sorted(tmp_path.glob("*.png")))
    assert [p.class_id for p in got] == list(want.argmax(1))
    assert np.mean([p.class_id for p in got] == labels) > 0.7  # a trained model, not noise
    # the committed model's Spec names a backend that no longer exists: one note, and it still runs
    assert len([line for line in said if "CPU" in line]) == 1


def test_the_mirror_of_the_spec_is_kept_on_the_cpu(tmp_path, said):
    model = write_checkpoint(tmp_path / "m.pt", optimize.Spec(mirror=True).to_dict())
    predictor = Predictor.load(tmp_path / "m.pt", device="cpu", say=said.append)
    images = random_images(4, seed=3)
    want = model_on(model, images, mirror=True)
    for img, logits in zip(images, want):
        assert np.array_equal(predictor(img).probabilities, predict.softmax(logits))
    assert "mirror" in predictor.runs


def test_an_unknown_backend_still_loads_with_one_note(tmp_path, said):
    old = {**optimize.Spec("fp16", cuda_graph=True).to_dict(), "backend": "fused-layers"}
    write_checkpoint(tmp_path / "old.pt", old)
    predictor = Predictor.load(tmp_path / "old.pt", device="cpu", say=said.append)
    assert predictor.spec == optimize.Spec("fp16", cuda_graph=True)
    assert len(said) == 1 and "'fused-layers' no longer exists" in said[0] and "CPU" in said[0]
    assert predictor(random_images(1)[0]).class_id in range(10)


def test_missing_classes_fall_back_to_numbers_and_a_missing_model_is_one_error(tmp_path, said):
    write_checkpoint(tmp_path / "bare.pt", classes=None)
    assert Predictor.load(tmp_path / "bare.pt", device="cpu", say=said.append).classes == [str(i) for i in range(10)]
    with pytest.raises(engine.CheckpointError, match="no final model at .*nowhere.pt"):
        Predictor.load(tmp_path / "nowhere.pt", device="cpu")


@pytest.mark.skipif(CUDA, reason="checks the refusal where no CUDA device is visible")
def test_cuda_asked_for_without_a_gpu_is_refused(checkpoint):
    with pytest.raises(predict.PredictError, match="no CUDA device"):
        Predictor.load(checkpoint, device="cuda")


# ---------------------------------------------------------------- images as people have them

def test_any_size_is_resized_with_lanczos_and_said_once(tmp_path, predictor, said):
    big = random_images(1, 48, 64, seed=1)[0]
    Image.fromarray(big).save(tmp_path / "big.png")
    pixels, source, done = predict.load_pixels(tmp_path / "big.png")
    want = np.asarray(Image.fromarray(big).resize((32, 32), Image.Resampling.LANCZOS))
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8 and np.array_equal(pixels, want)
    assert done == [("resized", "64x48")] and source == str(tmp_path / "big.png")
    predictor(tmp_path / "big.png")
    predictor(random_images(1, 10, 20)[0])
    resized = [line for line in said if "resized" in line]
    assert len(resized) == 1 and "Lanczos" in resized[0] and "big.png" in resized[0]


def test_greyscale_palette_and_alpha_become_rgb(tmp_path):
    rgb = random_images(1, seed=2)[0]
    grey = rgb[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    pixels, _, done = predict.load_pixels(tmp_path / "grey.png")
    assert np.array_equal(pixels, np.repeat(grey[..., None], 3, axis=2)) and done == [("grey", "")]

    alpha = np.zeros((32, 32, 1), dtype=np.uint8)  # fully transparent: the stored colour must survive
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(tmp_path / "rgba.png")
    pixels, _, done = predict.load_pixels(tmp_path / "rgba.png")
    assert np.array_equal(pixels, rgb) and done == [("alpha", "")]

    palette = Image.fromarray(rgb).quantize(16)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    pixels, _, done = predict.load_pixels(tmp_path / "palette.png")
    assert np.array_equal(pixels, np.asarray(palette.convert("RGB")))
    assert ("palette", "") in done and ("alpha", "") in done

    pixels, _, done = predict.load_pixels(np.concatenate([rgb, alpha], axis=2))  # arrays too
    assert np.array_equal(pixels, rgb) and done == [("alpha", "")]
    assert np.array_equal(predict.load_pixels(grey)[0], np.repeat(grey[..., None], 3, axis=2))


def test_16_bit_pngs_keep_their_high_byte(tmp_path, predictor, said):
    values = np.random.default_rng(4).integers(0, 65536, (32, 32, 3)).astype(np.uint16)
    (tmp_path / "rgb16.png").write_bytes(png16(values))
    pixels, _, done = predict.load_pixels(tmp_path / "rgb16.png")
    assert np.array_equal(pixels, (values >> 8).astype(np.uint8)) and ("16bit", "") in done
    (tmp_path / "grey16.png").write_bytes(png16(values[..., 1]))
    pixels, _, done = predict.load_pixels(tmp_path / "grey16.png")
    assert np.array_equal(pixels, np.repeat((values[..., 1:2] >> 8).astype(np.uint8), 3, axis=2))
    assert ("16bit", "") in done and ("grey", "") in done
    predictor(tmp_path / "grey16.png")
    assert any("16-bit" in line for line in said)


def test_a_photos_exif_orientation_is_applied(tmp_path):
    from PIL import ImageOps

    img = Image.fromarray(random_images(1, 20, 40, seed=5)[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated by 90 degrees
    img.save(tmp_path / "photo.png", exif=exif)
    pixels, _, done = predict.load_pixels(tmp_path / "photo.png")
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "photo.png"))
    assert upright.size == (20, 40)
    assert np.array_equal(pixels, np.asarray(upright.convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)))
    assert done[0] == ("rotated", "") and ("resized", "20x40") in done


def test_bad_inputs_are_one_clear_error_naming_them(tmp_path):
    jpeg = io.BytesIO()
    Image.fromarray(random_images(1, 64, 64)[0]).save(jpeg, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (tmp_path / "notes.png").write_text("not an image\n")
    (tmp_path / "folder").mkdir()
    cases = {tmp_path / "cut.jpg": "truncated", tmp_path / "notes.png": "not an image",
             tmp_path / "missing.png": "no such file", tmp_path / "folder": "a folder"}
    for path, what in cases.items():
        with pytest.raises(ImageError) as info:
            predict.load_pixels(path)
        message = str(info.value)
        assert message.startswith(str(path)) and what in message and "\n" not in message
    for array, what in ((np.zeros((32, 32, 3), np.float32), "float32"), (np.zeros((32, 32, 2), np.uint8), "shape")):
        with pytest.raises(ImageError, match=what):
            predict.load_pixels(array)
    with pytest.raises(ImageError, match="expected a file path"):
        predict.load_pixels(12)


def test_many_keeps_the_other_images_when_one_is_bad(tmp_path, predictor):
    Image.fromarray(random_images(1)[0]).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_text("text")
    with pytest.raises(ImageError, match="bad.png"):
        predictor.many([tmp_path / "bad.png", tmp_path / "good.png"])
    out = predictor.many([tmp_path / "bad.png", tmp_path / "good.png"], keep_errors=True)
    assert isinstance(out[0], ImageError) and out[1].class_id in range(10)


# ---------------------------------------------------------------- the command

def run_command(capsys, *argv):
    try:
        status = cli.main(["predict", *map(str, argv)])
    except SystemExit as exc:  # argparse's mistakes
        status = exc.code
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.splitlines()


def listing(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


def test_the_command_classifies_every_good_file_and_names_each_bad_one(tmp_path, capsys, checkpoint, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    images = random_images(3, 40, 40, seed=7)
    for i, img in enumerate(images):
        Image.fromarray(img).save(photos / f"{i}.png")
    (photos / "notes.png").write_text("a text file named .png")
    (photos / "README.txt").write_text("not an image suffix: skipped")
    jpeg = io.BytesIO()
    Image.fromarray(images[0]).save(jpeg, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(jpeg.getvalue()[:300])
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    status, out, err = run_command(capsys, photos, tmp_path / "cut.jpg", tmp_path / "gone.png", "--model", checkpoint,
                                   "--top", 2, "--device", "cpu")
    assert status == 2
    lines = [line for line in out if line.startswith(str(photos))]
    assert len(lines) == 3 and all("top-2:" in line and "%" in line for line in lines)
    assert out[-1].startswith("model time per image: mean") and "FP32 on the CPU" in out[-1]
    errors = [line for line in err if ": error: " in line]
    assert len(errors) == 3
    for name, what in (("notes.png", "not an image"), ("cut.jpg", "truncated"), ("gone.png", "no such file")):
        assert len([e for e in errors if name in e and what in e]) == 1
    assert listing(tmp_path) == before  # nothing written


def test_the_command_prints_json_lines(tmp_path, capsys, checkpoint):
    Image.fromarray(random_images(1)[0]).save(tmp_path / "a.png")
    status, out, err = run_command(capsys, tmp_path / "a.png", "--model", checkpoint, "--json", "--top", 4,
                                   "--device", "cpu")
    assert status == 0 and len(out) == 1
    record = json.loads(out[0])
    assert record["file"] == str(tmp_path / "a.png") and record["class"] == CLASSES[record["class_id"]]
    assert len(record["top"]) == 4 and record["top"][0]["class_id"] == record["class_id"] and record["model_ms"] > 0
    assert any("model time per image" in line for line in err)


@pytest.mark.parametrize("argv, what", [
    (["--top", "0"], "--top 0"),
    (["--top", "11"], "10 classes"),
    (["--model", "{tmp}/none.pt"], "no final model"),
    (["--device", "gpu"], "invalid choice"),
])
def test_command_mistakes_are_one_line_and_exit_2(tmp_path, capsys, checkpoint, argv, what):
    Image.fromarray(random_images(1)[0]).save(tmp_path / "a.png")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(checkpoint)]
    status, out, err = run_command(capsys, tmp_path / "a.png", "--device", "cpu", *argv)
    assert status == 2 and not out and len(err) == 1 and "error" in err[0] and what in err[0]


def test_an_empty_folder_and_no_input_at_all(tmp_path, capsys, checkpoint):
    (tmp_path / "empty").mkdir()
    status, out, err = run_command(capsys, tmp_path / "empty", "--model", checkpoint)
    assert status == 2 and not out and len(err) == 1 and "no image files" in err[0]
    status, out, err = run_command(capsys)
    assert status == 2 and not out and len(err) == 1 and "IMAGE_OR_FOLDER" in err[0]


# ---------------------------------------------------------------- J5

def j5_entry(model, spec=optimize.Spec()):
    return {"id": "F9", "variant": "FastNet test", "model_name": "fastnet", "model": model, "spec": spec}


def test_e2e_rows_time_the_device_resident_and_the_e2e_call_alternately(said):
    model = random_fastnet((16, 32, 32), 2)
    image = random_images(1)[0]
    rows = predict.e2e_rows(j5_entry(model), image, data.CIFAR10_MEAN, data.CIFAR10_STD, CLASSES, runs=2,
                            warmup_iters=1, measure_iters=3, meta={"profile": "smoke", "device_name": "cpu"},
                            device="cpu", say=said.append)
    assert list(rows.id) == ["F9", "F9-e2e", "F9", "F9-e2e"] and list(rows.run) == [1, 1, 2, 2]
    e2e = rows[rows.id == "F9-e2e"]
    assert (e2e.batch == 1).all() and e2e.notes.str.contains(predict.E2E_LABEL, regex=False).all()
    assert e2e.variant.str.contains("e2e").all() and not rows[rows.id == "F9"].variant.str.contains("e2e").any()
    assert (rows.lat_p95_ms > 0).all() and (rows.measure_iters == 3).all()
    lines = predict.e2e_verdict(rows)
    assert lines[0].startswith("F9-e2e: e2e p95") and "not GPU latencies" in lines[-1]


def test_e2e_verdict_compares_p95_with_the_target_and_splits_the_excess():
    def row(vid, run, p95):
        return {"id": vid, "run": run, "lat_p95_ms": p95, "profile": "full", "device_name": "NVIDIA H200"}

    rows = [row("F1", 1, 0.030), row("F1-e2e", 1, 0.033), row("F1-e2e-graph", 1, 0.031),
            row("F1", 2, 0.030), row("F1-e2e", 2, 0.035), row("F1-e2e-graph", 2, 0.033)]
    lines = predict.e2e_verdict(rows)
    assert lines[0].startswith("F1-e2e: e2e p95 0.0340 ms against 0.0300 ms") and "+4.0 us" in lines[0]
    assert lines[0].endswith("met") and len(lines) == 2
    assert "graph alone" in lines[1] and "+2.0 us; the host's part" in lines[1] and lines[1].count("+2.0 us") == 2
    assert predict.e2e_verdict(rows, target_us=3.0)[0].endswith("MISSED")
    assert predict.e2e_verdict(rows, target_us=0)[0].endswith("MISSED")  # 0 is a target, not "the default"
    with pytest.raises(notebook_params.ParameterError, match="e2e_target_us"):  # J5's parameter
        notebook_params.check_range("e2e_target_us", -1.0, "J5")
    assert "no device-resident row" in predict.e2e_verdict([r for r in rows if r["id"] != "F1"])[0]


def test_the_grid_marks_mistakes_and_the_confusion_matrix_counts_every_image(tmp_path, predictor):
    images = random_images(24, seed=9)
    predicted = [predictor(img).class_id for img in images]
    labels = np.array(predicted)
    labels[::3] = (labels[::3] + 1) % 10  # every third label disagrees with the model: 8 mistakes
    fig, found = predict.prediction_grid(predictor, images, labels, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").is_file() and [p.class_id for p in found] == predicted
    titles = [ax.title for ax in fig.axes if ax.get_title()]
    red = [t for t in titles if t.get_color() == "red"]
    assert len(titles) == 24 and len(red) == 8 and all(t.get_text().startswith("x ") for t in red)
    assert "8 mistakes" in fig._suptitle.get_text()
    result = predict.confusion_on(predictor, images, labels, tmp_path / "confusion.png")
    assert result["counts"].sum() == 24 and np.trace(result["counts"]) == 16
    assert result["counts"][labels[0], predicted[0]] >= 1 and result["accuracy"] == pytest.approx(100 * 16 / 24)
    assert (tmp_path / "confusion.png").is_file()


def test_graph_recording_and_pinned_copies_need_cuda():
    with pytest.raises(graphs.Unavailable):
        graphs.record(lambda: None, "cpu")
    with pytest.raises(ValueError, match="pinned"):
        graphs.copy_async(torch.zeros(4), torch.zeros(4))


# ---------------------------------------------------------------- CUDA (marker gpu)

def _final_and_test_images(n):
    if not FINAL.is_file():
        pytest.skip("no committed final model")
    try:
        cifar = data.load_cifar("cifar10")
    except data.DataError as exc:
        pytest.skip(f"no CIFAR-10 here ({exc}); make data")
    model, ckpt = engine.load_model(FINAL)
    return model, ckpt, cifar.test.images[:n]


MEGA = optimize.Spec("fp16", cuda_graph=True, backend="megakernel")
GPU_SPECS = {"megakernel-host-io": (MEGA, "host"), "megakernel-copies": (MEGA, "copies"),
             "torch-fp16": (optimize.Spec("fp16", fold_bn=True, cuda_graph=True), None)}


@on_gpu
@pytest.mark.parametrize("name", sorted(GPU_SPECS))
def test_the_predictors_graph_matches_the_variant_on_1000_test_images(name, monkeypatch):
    from fastcifar.core.kernels import TOLERANCE

    model, ckpt, images = _final_and_test_images(1000)
    spec, io = GPU_SPECS[name]
    if io:
        monkeypatch.setattr(predict, "MEGAKERNEL_IO", io)
    predictor = Predictor(model, spec, ckpt["mean"], ckpt["std"], ckpt["classes"], device="cuda", say=None)
    x = data.to_tensor(images, "cuda", ckpt["mean"], ckpt["std"])
    variant = optimize.build(model, spec, x[:1])
    tolerance = TOLERANCE if spec.backend == "megakernel" else 1e-3  # uint8 folded into FP16 layer 0 vs FP16 input
    same, decisive, worst_prob = 0, 0, 0.0
    for i, img in enumerate(images):
        want = variant(variant.prepare(x[i:i + 1]))[0].float().cpu().numpy()
        got = predictor(img)
        logits = predictor._path.logits
        assert np.abs(logits - want).max() <= tolerance * np.abs(want).max(), i
        worst_prob = max(worst_prob, float(np.abs(got.probabilities - predict.softmax(want)).max()))
        top2 = np.sort(want)[-2:]
        if top2[1] - top2[0] > 2 * tolerance * np.abs(want).max():
            decisive += 1
            assert got.class_id == int(want.argmax()), i
        same += got.class_id == int(want.argmax())
        assert got.class_id == int(logits.argmax())  # the class read back is the logits' argmax
    assert decisive > 900 and same >= 995 and worst_prob <= 0.02, (decisive, same, worst_prob)
    if spec.backend == "torch":
        assert same == 1000


@on_gpu
@pytest.mark.parametrize("name", sorted(GPU_SPECS))
def test_10000_back_to_back_calls_return_consistent_results(name, monkeypatch):
    model, ckpt, images = _final_and_test_images(10)
    spec, io = GPU_SPECS[name]
    if io:
        monkeypatch.setattr(predict, "MEGAKERNEL_IO", io)
    predictor = Predictor(model, spec, ckpt["mean"], ckpt["std"], ckpt["classes"], device="cuda", say=None)
    first = [predictor(img) for img in images]
    assert len({p.class_id for p in first}) > 1  # the graph reads each new image
    for i in range(10_000):
        k = i % len(images)
        assert predictor.class_id(images[k]) == first[k].class_id, i
        if i % 1000 == 999:
            again = predictor(images[k])
            assert np.array_equal(again.probabilities, first[k].probabilities), i


@on_gpu
def test_e2e_rows_on_cuda_time_the_graph_alone_and_no_gpu_events_for_e2e():
    model, ckpt, images = _final_and_test_images(1)
    entry = {"id": "F1-mega", "variant": "FastNet F1", "model_name": "fastnet", "model": model, "spec": MEGA}
    rows = predict.e2e_rows(entry, images[0], ckpt["mean"], ckpt["std"], ckpt["classes"], runs=2, warmup_iters=5,
                            measure_iters=20, meta={"profile": "full"}, device="cuda", say=None)
    assert list(rows.id[:3]) == ["F1-mega", "F1-mega-e2e", "F1-mega-e2e-graph"] and len(rows) == 6
    resident, e2e = rows[rows.id == "F1-mega"], rows[rows.id != "F1-mega"]
    assert resident.gpu_mean_ms.notna().all() and e2e.gpu_mean_ms.isna().all()  # the e2e call waits inside
    assert len(predict.e2e_verdict(rows)) == 2


def test_j5_shows_the_candidate_or_else_the_fastest_row():
    import pandas as pd

    entries = [j5_entry(None) | {"id": i} for i in ("B1", "F1", "O4")]
    table = pd.DataFrame({"id": ["B1", "F1", "O4"], "lat_p95_ms": [3.0, 0.05, float("nan")]})
    entry, line = predict.subject(entries[2], table, entries)
    assert entry["id"] == "O4" and "final candidate, O4" in line
    entry, line = predict.subject(None, table, entries)
    assert entry["id"] == "F1" and "stands in" in line
    with pytest.raises(ValueError, match="no measured variant"):
        predict.subject(None, table.assign(lat_p95_ms=float("nan")), entries)


def test_the_e2e_row_joins_the_final_table_beside_its_variant_and_never_competes(tmp_path):
    import pandas as pd

    from fastcifar.core import bench
    from fastcifar.series import report

    def row(vid, run, p95, gpu=float("nan")):
        return {"id": vid, "variant": vid, "run": run, "lat_p95_ms": p95, "lat_mean_ms": p95, "gpu_mean_ms": gpu}

    rows = bench.numeric_columns(pd.DataFrame([row("F1", 1, 0.030, 0.02), row("F1-e2e", 1, 0.034),
                                               row("F1-e2e-graph", 1, 0.032), row("F1", 2, 0.030, 0.02),
                                               row("F1-e2e", 2, 0.036), row("F1-e2e-graph", 2, 0.033)]))
    table = pd.DataFrame({"id": ["B1", "F1", "O4"], "val_accuracy": [85.1, 86.0, 90.0], "accuracy": [85.0, 86.2, 91.0],
                          "lat_p95_ms": [3.0, 0.030, 0.3], "final": [False, True, False]})
    out = predict.with_e2e(table, rows, accuracy=86.1)
    assert list(out.id) == ["B1", "F1", "F1-e2e", "O4"]
    e2e = out[out.id == "F1-e2e"].iloc[0]
    assert e2e.lat_p95_ms == pytest.approx(0.035) and e2e.accuracy == 86.1 and np.isnan(e2e.val_accuracy)
    assert not e2e.final and report.select_final(out, 85.0).id == "F1"  # chosen on validation: never the e2e row
    assert list(predict.with_e2e(out, rows).id) == list(out.id)  # a second call replaces, not duplicates
    path = predict.write_e2e(tmp_path / "e2e.csv", rows)
    assert list(bench.read_results(path).id) == ["F1#1", "F1-e2e#1", "F1-e2e-graph#1", "F1#2", "F1-e2e#2",
                                                 "F1-e2e-graph#2"]
