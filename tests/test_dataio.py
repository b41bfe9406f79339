"""flashclr.dataio on real DALI pipelines (CPU-only here; the `gpu` test runs nvJPEG + GPU ops).

Images are tiny JPEGs/PNGs written by the tests; outputs are 16-24 px so each pipeline costs
little beyond its build.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from flashclr.dataio import DataError, augment, build_loader, class_names, label_subset, num_classes
from flashclr.dataio.digits import write_digits
from flashclr.dataio.pipelines import MEAN, STD
from tests.distributed import run_distributed

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MEAN_T = torch.tensor(MEAN).view(1, 3, 1, 1)
STD_T = torch.tensor(STD).view(1, 3, 1, 1)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: (B, 3, S, S) -> 0..255."""
    return (x.float().cpu() * STD_T + MEAN_T) * 255


def colourful(seed: int, size=(32, 32)) -> np.ndarray:
    """A saturated image: each pixel one of a few strongly coloured, smooth blobs."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    coarse[..., rng.integers(3)] = 0  # a zero channel keeps every blob far from gray
    return np.asarray(Image.fromarray(coarse).resize(size, Image.BILINEAR))


def write_folder(root, counts: dict[str, int], size=(32, 32)) -> None:
    for k, (cls, n) in enumerate(counts.items()):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(n):
            img = Image.fromarray(colourful(100 * k + i, size))
            img.save(os.path.join(root, cls, f"{cls}_{i:03d}.jpg"), quality=95)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    """3 classes x 12 colourful 32x32 JPEGs."""
    root = str(tmp_path_factory.mktemp("folder"))
    write_folder(root, {"cat": 12, "dog": 12, "eel": 12})
    return root


@pytest.fixture(scope="module")
def ramps(tmp_path_factory) -> str:
    """48x64 (h x w) JPEGs whose red channel is the x coordinate and green the y coordinate."""
    root = str(tmp_path_factory.mktemp("ramps"))
    os.makedirs(os.path.join(root, "r"))
    h, w = 48, 64
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = np.round(np.linspace(0, 255, w))[None, :]
    img[..., 1] = np.round(np.linspace(0, 255, h))[:, None]
    for i in range(16):
        Image.fromarray(img).save(os.path.join(root, "r", f"{i:02d}.png"))
    return root


def labels_of(paths: list[str]) -> list[str]:
    return [os.path.basename(os.path.dirname(p)) for p in paths]


# ---------------------------------------------------------------- batches, views, labels, len


def test_pretrain_batches_views_and_labels(folder):
    loader = build_loader("pretrain", folder, batch_size=8, image_size=24, seed=1)
    assert len(loader) == 36 // 8 == 4
    assert loader.classes == ["cat", "dog", "eel"] and loader.num_classes == 3
    batches = list(loader)
    assert len(batches) == 4
    order = loader.shard_paths(0)
    for b, (v1, v2, y) in enumerate(batches):
        assert v1.shape == v2.shape == (8, 3, 24, 24) and v1.dtype == torch.float32 and v1.is_contiguous()
        assert y.dtype == torch.int64 and y.shape == (8,)
        expected = [loader.classes.index(c) for c in labels_of(order[8 * b : 8 * b + 8])]
        assert y.tolist() == expected
        # two independent augmentations: every pair of views differs
        assert ((v1 - v2).abs().flatten(1).amax(1) > 0.1).all()
        assert torch.isfinite(v1).all() and torch.isfinite(v2).all()


def test_eval_every_image_once_with_partial_last_batch(folder):
    loader = build_loader("eval", folder, batch_size=5, image_size=16)
    assert len(loader) == 8
    batches = list(loader)
    assert [x.shape[0] for x, _ in batches] == [5] * 7 + [1]
    labels = torch.cat([y for _, y in batches]).tolist()
    assert labels == [0] * 12 + [1] * 12 + [2] * 12  # listing order, each image once
    again = list(loader)  # second epoch: eval is deterministic
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


def test_channels_last_equals_nchw(folder):
    a, _ = next(iter(build_loader("eval", folder, batch_size=6, image_size=16)))
    b, _ = next(iter(build_loader("eval", folder, batch_size=6, image_size=16, channels_last=True)))
    assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
    assert torch.equal(a, b)
    # pretraining: the colour and blur on the batch (batch_augment.py) in either layout
    a = next(iter(build_loader("pretrain", folder, batch_size=6, image_size=40, seed=4)))
    b = next(iter(build_loader("pretrain", folder, batch_size=6, image_size=40, seed=4, channels_last=True)))
    for x, y in zip(a[:2], b[:2], strict=True):
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


@pytest.mark.parametrize("stage", ["finetune", "distill"])
def test_crop_flip_stages(folder, stage):
    loader = build_loader(stage, folder, batch_size=12, image_size=16)
    assert len(loader) == 3
    x, y = next(iter(loader))
    assert x.shape == (12, 3, 16, 16) and y.shape == (12,)
    # crop + flip only: no colour change, so no view turns gray
    px = to_pixels(x)
    assert ((px[:, 0] - px[:, 1]).abs().amax((1, 2)) > 10).all()


# ---------------------------------------------------------------- augmentation statistics


def test_crop_window_sampler_statistics():
    rng = np.random.default_rng(0)
    sizes = np.array([[48, 64]] * 4000 + [[10, 1000]] * 100)  # the second shape forces the fallback
    roi = augment.random_resized_crop(rng, sizes)
    y0, x0, y1, x1 = roi.T
    assert (roi >= -1e-9).all() and (roi <= 1 + 1e-9).all() and (y1 > y0).all() and (x1 > x0).all()
    area = (y1 - y0) * (x1 - x0)
    ratio = (x1 - x0) * sizes[:, 1] / ((y1 - y0) * sizes[:, 0])
    normal = slice(0, 4000)
    assert area[normal].min() >= 0.08 - 1e-9 and area[normal].max() <= 1 + 1e-9
    assert area[normal].min() < 0.1 and area[normal].max() > 0.9  # the whole range is used
    assert ratio[normal].min() >= 3 / 4 - 1e-9 and ratio[normal].max() <= 4 / 3 + 1e-9
    assert np.allclose(ratio[4000:], 4 / 3)  # fallback: centre crop at the widest allowed ratio
    assert np.allclose((x0 + x1)[4000:], 1.0)


def test_crop_and_flip_applied_by_dali(ramps):
    """The ramp image encodes pixel coordinates, so each output shows its crop window and flip."""
    loader = build_loader("finetune", ramps, batch_size=16, image_size=16, seed=0)
    areas, ratios, flips = [], [], []
    for epoch in range(4):
        loader.set_epoch(epoch)
        for x, _ in loader:
            px = to_pixels(x)  # (16, 3, 16, 16)
            left, right = px[:, 0, :, 0].mean(1), px[:, 0, :, -1].mean(1)
            top, bottom = px[:, 1, 0, :].mean(1), px[:, 1, -1, :].mean(1)
            # edge pixel centres sit half a pixel inside the window: scale the span by S/(S-1)
            w = (right - left).abs() / 255 * 16 / 15
            h = (bottom - top) / 255 * 16 / 15
            areas += (w * h).tolist()
            ratios += ((w * 64) / (h * 48)).tolist()
            flips += (right < left).tolist()
    areas, ratios = np.array(areas), np.array(ratios)
    assert 0.06 < areas.min() < 0.2 and 0.75 < areas.max() < 1.08
    assert ratios.min() > 0.65 and ratios.max() < 1.5
    assert 0.3 < np.mean(flips) < 0.7


def test_jitter_parameters_statistics():
    """Jitter p = 0.8, grayscale p = 0.2 (saturation 0), blur p = 0.5, a random op order per view."""
    rng = np.random.default_rng(3)
    params = augment.simclr_params(rng, np.array([[40, 40]] * 4000))
    colour = params[:, augment.BRIGHTNESS : augment.HUE + 1]
    identity = np.all(colour == [1, 1, 1, 0], axis=1)
    gray = params[:, augment.SATURATION] == 0
    # identity colour for (1 - 0.8) * (1 - 0.2) = 16% of the views; 3 standard deviations ~ 0.018
    assert 0.14 < identity.mean() < 0.18 and 0.18 < gray.mean() < 0.22
    assert 0.47 < (params[:, augment.SIGMA] > 0).mean() < 0.53
    sigma = params[params[:, augment.SIGMA] > 0, augment.SIGMA]
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0
    hue = params[~identity, augment.HUE]
    assert np.abs(hue).max() <= 0.2 and np.abs(hue).max() > 0.19  # turns, strength 1
    order = params[:, augment.ORDER].astype(int)
    assert (np.sort(order, axis=1) == [0, 1, 2, 3]).all()  # a permutation in every row
    jittered = ~identity & ~gray
    first = np.bincount(order[jittered, 0], minlength=4) / jittered.sum()
    assert (np.abs(first - 0.25) < 0.04).all()  # each op comes first a quarter of the time


def test_grayscale_fraction(folder):
    loader = build_loader("pretrain", folder, batch_size=12, image_size=16, seed=5)
    gray, total = 0, 0
    for _ in range(4):
        for v1, v2, _ in loader:
            for v in (v1, v2):
                px = to_pixels(v)
                spread = (px.amax(1) - px.amin(1)).amax((1, 2))  # per view: max channel spread
                gray += int((spread < 2.0).sum())
                total += v.shape[0]
    # p = 0.2 over 288 views: 3 standard deviations is +-0.07
    assert total == 288
    assert 0.13 < gray / total < 0.27


def test_blur_is_applied_to_about_half_the_views(folder, monkeypatch):
    """Same seed with the blur forced on or off: blurred views are smoother, others unchanged."""
    out = {}
    for p in (0.0, 1.0):
        monkeypatch.setattr(augment, "BLUR_P", p)
        v1, _, _ = next(iter(build_loader("pretrain", folder, batch_size=12, image_size=40, seed=2)))
        out[p] = v1
    # the sigmas the loader drew for view1 of batch 0 (the folder's images are 32 x 32)
    rng = augment.batch_rng(2, 0, 0, 0, "pretrain")
    sigma = torch.from_numpy(augment.simclr_params(rng, np.full((12, 2), 32))[:, augment.SIGMA])
    roughness = {p: (v[..., 1:] - v[..., :-1]).abs().mean((1, 2, 3)) for p, v in out.items()}
    visible = sigma > 0.3  # below, the 3-tap window's side weights are under 0.4%
    assert visible.sum() >= 6
    assert (roughness[1.0][visible] < roughness[0.0][visible]).all()
    assert (roughness[1.0] <= roughness[0.0] + 1e-6).all()


# ---------------------------------------------------------------- reproducibility, resume, shards


def test_same_seed_same_batches_and_exact_resume(folder):
    def run(**kw):
        loader = build_loader("pretrain", folder, batch_size=6, image_size=16, seed=7, **kw)
        return [list(loader) for _ in range(2)]  # two epochs

    first = run()
    resumed = build_loader("pretrain", folder, batch_size=6, image_size=16, seed=7, epoch=1, start_batch=4)
    tail = list(resumed)
    assert len(tail) == len(resumed) - 4 == 2
    for got, want in zip(tail, first[1][4:], strict=True):
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    # after the resumed epoch, the next iteration is epoch 2 from its first batch
    assert resumed.epoch == 2
    again = run()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[0], again[0], strict=True))
    one_thread = build_loader("pretrain", folder, batch_size=6, image_size=16, seed=7, num_threads=1)
    assert all(torch.equal(a, b) for a, b in zip(next(iter(one_thread)), first[0][0], strict=True))
    other = build_loader("pretrain", folder, batch_size=6, image_size=16, seed=8)
    assert not torch.equal(next(iter(other))[0], first[0][0][0])
    assert first[0][0][2].tolist() != first[1][0][2].tolist()  # epochs are shuffled differently


def test_leaving_an_epoch_early_then_resuming(folder):
    loader = build_loader("finetune", folder, batch_size=6, image_size=16, seed=3)
    full = list(loader)
    loader.set_epoch(0)
    it = iter(loader)
    next(it)
    del it  # the pipeline had prefetched ahead: the next pass must not see those batches
    loader.set_epoch(0, start_batch=2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(list(loader), full[2:], strict=True))


def test_shards_partition_the_files(folder):
    files = set(build_loader("eval", folder, batch_size=4, image_size=16).paths)
    for stage in ("eval", "pretrain"):
        parts = [
            build_loader(stage, folder, batch_size=4, image_size=16, shard_id=r, num_shards=3).shard_paths(0)
            for r in range(3)
        ]
        assert sum(len(p) for p in parts) == 36 and set().union(*parts) == files
    with pytest.raises(ValueError, match="shard_id"):
        build_loader("eval", folder, batch_size=4, shard_id=3, num_shards=3)
    with pytest.raises(ValueError, match="both"):
        build_loader("eval", folder, batch_size=4, shard_id=0)


def _rank_labels(rank, world_size, root):
    loader = build_loader("eval", root, batch_size=5, image_size=16, num_threads=1)
    seen = torch.cat([y for _, y in loader])
    # plain lists: a tensor sent through the result queue needs its sender alive until received
    return loader.shard_paths(0), seen.tolist(), len(loader)


def test_shards_from_torch_distributed(folder):
    (p0, y0, n0), (p1, y1, n1) = run_distributed(_rank_labels, 2, folder)
    assert set(p0).isdisjoint(p1) and len(p0) + len(p1) == 36
    assert n0 == n1 == 4 and len(y0) == len(y1) == 18
    assert y0 + y1 == [0] * 12 + [1] * 12 + [2] * 12


# ---------------------------------------------------------------- sources, subsets, digits


def test_file_list_source_and_class_names(folder, tmp_path):
    lines = [
        f"{os.path.relpath(os.path.join(folder, c, f'{c}_000.jpg'), tmp_path)} {k}\n"
        for k, c in enumerate(["cat", "dog", "eel"])
    ]
    listing = tmp_path / "list.txt"
    listing.write_text("# relpath label\n" + "".join(lines))
    loader = build_loader("eval", str(listing), batch_size=3, image_size=16)
    assert next(iter(loader))[1].tolist() == [0, 1, 2]
    assert class_names(folder) == ["cat", "dog", "eel"] and num_classes(str(listing)) == 3
    pairs = [(os.path.join(folder, "dog", "dog_001.jpg"), 4)]
    assert num_classes(pairs) == 5
    with pytest.raises(DataError, match="missing file: .*nope.jpg"):
        build_loader("eval", [*pairs, (os.path.join(folder, "nope.jpg"), 0)], batch_size=1)
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg 0\nb.jpg\n")
    with pytest.raises(DataError, match=r"bad.txt:2"):
        build_loader("eval", str(bad), batch_size=1)


def test_label_fractions(tmp_path):
    root = str(tmp_path / "unbalanced")
    write_folder(root, {"a": 30, "b": 9, "c": 2})
    sub = label_subset(root, fraction=0.1, seed=0)
    per_class = np.bincount([y for _, y in sub], minlength=3)
    assert per_class.tolist() == [3, 1, 1]  # round(10%), at least one per class
    assert sub == label_subset(root, fraction=0.1, seed=0)
    assert sub != label_subset(root, fraction=0.1, seed=1)
    with pytest.raises(ValueError, match="fraction"):
        label_subset(root, fraction=1.5)
    with pytest.raises(ValueError, match="exactly one"):
        label_subset(root, fraction=0.1, file="1percent.txt")
    loader = build_loader("finetune", root, batch_size=5, image_size=16, label_subset=0.1)
    assert len(loader) == 1 and set(loader.paths) == {p for p, _ in sub}


def test_label_subset_file(tmp_path):
    root = tmp_path / "imnet"
    os.makedirs(root / "n01440764")
    os.makedirs(root / "n01443537")
    names = ["n01440764_10026.JPEG", "n01440764_10027.JPEG", "n01443537_2.JPEG"]
    for n in names:
        Image.fromarray(colourful(len(n))).save(root / n.split("_")[0] / n, format="JPEG")
    subset_file = tmp_path / "1percent.txt"
    subset_file.write_text("n01440764_10027.JPEG\nn01443537_2.JPEG\n")
    sub = label_subset(str(root), file=str(subset_file))
    assert [(os.path.basename(p), y) for p, y in sub] == [
        ("n01440764_10027.JPEG", 0),
        ("n01443537_2.JPEG", 1),
    ]
    loader = build_loader("eval", str(root), batch_size=2, image_size=16, label_subset=str(subset_file))
    assert next(iter(loader))[1].tolist() == [0, 1]
    subset_file.write_text("n01440764_10027.JPEG\nn09999999_1.JPEG\nn09999999_2.JPEG\n")
    with pytest.raises(
        DataError, match=r"names 2 image\(s\) not in the source: n09999999_1.JPEG, n09999999_2"
    ):
        label_subset(str(root), file=str(subset_file))


def test_digits_dataset(tmp_path):
    counts = write_digits(str(tmp_path), size=16)
    assert counts == {"train": 1437, "val": 360}
    assert class_names(str(tmp_path / "train")) == [str(d) for d in range(10)]
    val_counts = [len(os.listdir(tmp_path / "val" / str(d))) for d in range(10)]
    assert min(val_counts) >= 35 and sum(val_counts) == 360  # stratified: about 36 per digit
    with Image.open(tmp_path / "train" / "0" / sorted(os.listdir(tmp_path / "train" / "0"))[0]) as im:
        assert im.format == "JPEG" and im.size == (16, 16)
    x, y = next(iter(build_loader("eval", str(tmp_path / "val"), batch_size=360, image_size=16)))
    assert x.shape == (360, 3, 16, 16) and torch.bincount(y).tolist() == val_counts


# ---------------------------------------------------------------- bad input


def _bad_folder(tmp_path, name: str, payload) -> tuple[str, str]:
    root = str(tmp_path / name)
    write_folder(root, {"a": 4, "b": 4})
    bad = os.path.join(root, "b", "zz_bad.jpg")
    with open(bad, "wb") as f:
        f.write(payload(open(os.path.join(root, "a", "a_000.jpg"), "rb").read()))
    return root, bad


@pytest.mark.parametrize(
    "kind,payload",
    [
        ("truncated_in_header", lambda jpeg: jpeg[:300]),
        ("truncated_in_scan", lambda jpeg: jpeg[: jpeg.index(b"\xff\xda") + 60]),
        ("not_an_image", lambda jpeg: b"this is a text file, not a JPEG\n" * 20),
        ("empty_file", lambda jpeg: b""),
    ],
)
def test_bad_files_fail_or_skip(tmp_path, kind, payload):
    root, bad = _bad_folder(tmp_path, kind, payload)
    with pytest.raises(DataError, match=bad):
        build_loader("pretrain", root, batch_size=2, image_size=16)
    with pytest.warns(UserWarning, match="skipped 1 bad file"):
        loader = build_loader("pretrain", root, batch_size=2, image_size=16, on_bad_file="skip")
    assert [p for p, _ in loader.skipped] == [bad] and len(loader.paths) == 8
    assert sum(v1.shape[0] for v1, _, _ in loader) == 8


def test_file_corrupted_after_validation_fails_or_is_skipped(tmp_path):
    root, _ = _bad_folder(tmp_path, "later", lambda jpeg: jpeg)  # 9 good files
    strict = build_loader("eval", root, batch_size=3, image_size=16)
    lenient = build_loader("eval", root, batch_size=3, image_size=16, on_bad_file="skip")
    victim = os.path.join(root, "a", "a_002.jpg")  # in the first batch
    with open(victim, "wb") as f:
        f.write(b"garbage written after the loader was built")
    with pytest.raises(DataError, match=victim):
        list(strict)
    with pytest.warns(UserWarning, match="skipped 1 file"):
        labels = torch.cat([y for _, y in lenient]).tolist()
    assert labels == [0] * 3 + [1] * 5  # every other image exactly once
    assert [p for p, _ in lenient.skipped] == [victim] and len(lenient) == 3


def test_empty_class_folder_and_empty_root(tmp_path):
    root = tmp_path / "holes"
    write_folder(str(root), {"a": 4, "c": 4})
    os.makedirs(root / "b")
    (root / "b" / "notes.txt").write_text("not an image extension: not listed")
    with pytest.raises(DataError, match="empty class folder.*: b"):
        build_loader("eval", str(root), batch_size=2)
    with pytest.warns(UserWarning, match="empty class folder"):
        loader = build_loader("eval", str(root), batch_size=2, image_size=16, on_bad_file="skip")
    assert (
        loader.classes == ["a", "b", "c"] and torch.cat([y for _, y in loader]).tolist() == [0] * 4 + [2] * 4
    )
    os.makedirs(tmp_path / "void")
    with pytest.raises(DataError, match="empty root"):
        build_loader("eval", str(tmp_path / "void"), batch_size=2)
    os.makedirs(tmp_path / "void" / "x")
    with pytest.raises(DataError, match="empty root"):
        build_loader("eval", str(tmp_path / "void"), batch_size=2)
    with pytest.raises(DataError, match="neither a folder nor a file list"):
        build_loader("eval", str(tmp_path / "nowhere"), batch_size=2)
    with pytest.raises(DataError, match="fewer than one batch"):
        build_loader("pretrain", str(root), batch_size=9, on_bad_file="skip")


def test_grayscale_cmyk_png_mixed_in(tmp_path):
    root = tmp_path / "mixed"
    os.makedirs(root / "x")
    rgb = colourful(3)
    Image.fromarray(rgb).save(root / "x" / "0_rgb.jpg", quality=95)
    Image.fromarray(rgb).convert("L").save(root / "x" / "1_gray.jpg", quality=95)
    Image.fromarray(rgb).convert("CMYK").save(root / "x" / "2_cmyk.jpg", quality=95)
    Image.fromarray(rgb).save(root / "x" / "3_rgb.png")
    Image.fromarray(rgb).convert("RGBA").save(root / "x" / "4_rgba.png")
    Image.fromarray(rgb).convert("P").save(root / "x" / "5_palette.png")
    Image.fromarray(rgb).convert("L").save(root / "x" / "6_gray.png")
    loader = build_loader("eval", str(root), batch_size=7, image_size=32)
    x, _ = next(iter(loader))
    px = to_pixels(x)  # eval at 32 px on 32x32 inputs: resize to 36 then crop the centre 32
    ref = torch.from_numpy(np.asarray(Image.fromarray(rgb).resize((36, 36), Image.BILINEAR))[2:34, 2:34])
    ref = ref.permute(2, 0, 1).float()
    for i in (0, 2, 3, 4, 5):  # colour images match the RGB original (CMYK not inverted)
        assert (px[i] - ref).abs().mean() < 12, i
    for i in (1, 6):  # gray files decode to three equal channels
        assert (px[i].amax(0) - px[i].amin(0)).max() < 1.0


def test_argument_errors(folder):
    with pytest.raises(ValueError, match="stage"):
        build_loader("train", folder, batch_size=2)
    with pytest.raises(ValueError, match="on_bad_file"):
        build_loader("eval", folder, batch_size=2, on_bad_file="ignore")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            build_loader("eval", folder, batch_size=2, device="cuda")


@pytest.mark.gpu
def test_gpu_pipeline_matches_shapes_and_device(folder):
    loader = build_loader("pretrain", folder, batch_size=8, image_size=24, device="cuda", channels_last=True)
    v1, v2, y = next(iter(loader))
    assert v1.is_cuda and v2.is_cuda and y.is_cuda and v1.shape == (8, 3, 24, 24)
    assert v1.is_contiguous(memory_format=torch.channels_last)
    cpu = build_loader("eval", folder, batch_size=6, image_size=16)
    gpu = build_loader("eval", folder, batch_size=6, image_size=16, device="cuda")
    a, b = next(iter(cpu))[0], next(iter(gpu))[0].cpu()
    assert (a - b).abs().mean() < 0.05  # nvJPEG and CUDA resampling differ slightly from the CPU
