"""The offline data layer (issue 2): registry, loaders, encodings, splits, frame cache, CLI.

Tests that need the real datasets look for them in $SDSNN_DATA_ROOT, else in ../shared/datasets
and the project's cache/data (where .ci/run builds CIFAR-10); they are skipped, with the reason,
only when the files are truly absent. Event frames are cached in a temporary SDSNN_CACHE_DIR.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sdsnn.config import DataConfig
from sdsnn.data import DATASETS, build_loaders, data_roots, ensure_available, get_dataset, register_dataset
from sdsnn.data.images import ImageDataset
from sdsnn.data.loaders import BatchLoader, random_crop_flip, split_train_val
from sdsnn.errors import ConfigError, DatasetUnavailable
from sdsnn_search.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


def _shared_roots() -> list[Path]:
    env = os.environ.get("SDSNN_DATA_ROOT", "").strip()
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [p for p in (REPO.parent / "shared" / "datasets", REPO / "cache" / "data") if p.is_dir()]


SHARED = os.pathsep.join(str(p) for p in _shared_roots())


def _root_for(name: str) -> str:
    roots = _shared_roots()
    if get_dataset(name).find([r.absolute() for r in roots]) is None:
        pytest.skip(f"{name} files not found in data roots {SHARED or '(none)'}: set SDSNN_DATA_ROOT to a folder that has them")
    return SHARED


@pytest.fixture(autouse=True)
def data_cache_dir(tmp_path_factory, monkeypatch):
    """Frame caches go to a per-module temporary folder, never into the user's cache."""
    d = tmp_path_factory.getbasetemp() / "sdsnn-cache"
    monkeypatch.setenv("SDSNN_CACHE_DIR", str(d))
    return d


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


# ----------------------------------------------------------------------------- digits
def test_digits_shapes_static_input_and_sizes():
    b = build_loaders(DataConfig(dataset="digits", time_steps=3, batch_size=50), seed=0)
    assert b.num_classes == 10 and b.input_shape == (1, 8, 8) and b.static_input
    assert b.sizes["train"] + b.sizes["val"] + b.sizes["test"] == 1797
    assert b.sizes["test"] == 360
    x, y = next(iter(b.train))
    assert x.shape == (3, 50, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (50,) and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) == 1.0
    assert all(torch.equal(x[0], x[t]) for t in range(3))
    assert x.stride(0) == 0  # direct encoding is an expanded view, not T copies
    for loader in (b.train, b.val, b.test):
        batches = list(loader)
        assert len(batches) == len(loader)
        assert sum(len(yb) for _, yb in batches) == loader.num_samples
        assert all(int(yb.min()) >= 0 and int(yb.max()) < 10 for _, yb in batches)


def test_validation_split_disjoint_deterministic_and_test_separate():
    tr, va = split_train_val(1000, 0.2, seed=3)
    assert len(va) == 200 and len(tr) == 800
    assert not set(tr) & set(va) and set(tr) | set(va) == set(range(1000))
    tr2, va2 = split_train_val(1000, 0.2, seed=3)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    assert not np.array_equal(va, split_train_val(1000, 0.2, seed=4)[1])

    cfg = DataConfig(dataset="digits", val_fraction=0.25)
    b1, b2 = build_loaders(cfg, seed=7), build_loaders(cfg, seed=7)
    assert torch.equal(b1.val.x, b2.val.x) and torch.equal(b1.val.y, b2.val.y)
    assert b1.sizes["val"] == round(0.25 * (1797 - 360))
    # validation rows come out of the training set, the test set is the fixed held-out part
    b0 = build_loaders(DataConfig(dataset="digits", val_fraction=0.25), seed=8)
    assert not torch.equal(b0.val.x, b1.val.x)
    assert torch.equal(b0.test.x, b1.test.x)
    flat = lambda t: {bytes(r) for r in t.reshape(len(t), -1).numpy()}  # noqa: E731
    assert flat(b1.train.x) | flat(b1.val.x) == flat(b0.train.x) | flat(b0.val.x)


def test_set_epoch_is_deterministic_and_eval_order_fixed():
    cfg = DataConfig(dataset="digits", batch_size=64, encoding="poisson", time_steps=2)
    b1, b2 = build_loaders(cfg, seed=1), build_loaders(cfg, seed=1)
    b1.train.set_epoch(3)
    b2.train.set_epoch(3)
    e3 = _batches(b1.train)
    assert _same(e3, _batches(b2.train))  # a resumed run sees the same batches
    assert _same(e3, _batches(b1.train))  # iterating again repeats the epoch
    b1.train.set_epoch(4)
    assert not torch.equal(e3[0][1], next(iter(b1.train))[1])  # another epoch, another order
    b3 = build_loaders(cfg, seed=2)
    b3.train.set_epoch(3)
    assert not torch.equal(e3[0][1], next(iter(b3.train))[1])
    # val/test: fixed order and the same Poisson spikes at every evaluation
    v1 = _batches(b1.val)
    b1.train.set_epoch(9)
    assert _same(v1, _batches(b1.val))
    assert torch.equal(torch.cat([y for _, y in v1]), b1.val.y)


def _image_loader(workers: int, **kw) -> BatchLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (203, 3, 12, 12), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (203,), generator=g)
    return BatchLoader(x, y, batch_size=16, time_steps=3, seed=5, stream="train", shuffle=True,
                       encoding="poisson", augment=True, num_workers=workers, **kw)


def test_background_workers_give_the_same_batches_in_the_same_order():
    single, threaded = _image_loader(0), _image_loader(3)
    epochs = []
    for epoch in (0, 1):
        single.set_epoch(epoch)
        threaded.set_epoch(epoch)
        a, b = _batches(single), _batches(threaded)
        assert len(a) == len(b) == len(single) == 13
        assert _same(a, b)  # augmentation, spikes and order do not depend on the threads
        epochs.append(a)
    assert not torch.equal(epochs[0][0][0], epochs[1][0][0])
    # through the config: data.num_workers reaches every loader, same batches as without
    cfg = DataConfig(dataset="digits", batch_size=64, encoding="poisson", time_steps=2)
    b0, b2 = build_loaders(cfg, seed=3), build_loaders(cfg.model_copy(update={"num_workers": 2}), seed=3)
    assert (b2.train.num_workers, b2.val.num_workers, b2.test.num_workers) == (2, 2, 2)
    for part in ("train", "val", "test"):
        assert _same(_batches(getattr(b0, part)), _batches(getattr(b2, part)))


def test_background_workers_stop_with_the_consumer_and_pass_errors_on():
    import threading

    loader = _image_loader(2)
    it = iter(loader)
    next(it), next(it)
    it.close()  # the consumer stops early (a NaN loss, an interrupted epoch)
    assert not [t for t in threading.enumerate() if t.name.startswith("sdsnn-batches")]

    broken = _image_loader(2)
    calls = []

    def convert(xb, g):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("bad batch")
        return xb.float()

    broken._convert = convert
    with pytest.raises(RuntimeError, match="bad batch"):
        _batches(broken)
    assert not [t for t in threading.enumerate() if t.name.startswith("sdsnn-batches")]


def test_poisson_is_binary_with_rate_equal_to_intensity():
    T = 400
    direct = build_loaders(DataConfig(dataset="digits", eval_batch_size=100), seed=0)
    poisson = build_loaders(DataConfig(dataset="digits", eval_batch_size=100, encoding="poisson", time_steps=T), seed=0)
    assert not poisson.static_input
    xd, _ = next(iter(direct.test))
    xp, _ = next(iter(poisson.test))
    assert xp.shape == (T, 100, 1, 8, 8)
    assert set(torch.unique(xp).tolist()) <= {0.0, 1.0}
    rate = xp.mean(0)
    assert float((rate - xd[0]).abs().max()) < 0.12  # 5 sigma of a Bernoulli mean over 400 steps
    assert float((rate - xd[0]).abs().mean()) < 0.02
    assert float(rate[xd[0] == 0].max()) == 0.0  # black pixels never fire


def test_random_crop_flip_is_a_shifted_window_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    out = random_crop_flip(x, g, pad=2)
    assert out.shape == x.shape
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [xp[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    again = random_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert torch.equal(out, again)


def test_unknown_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown dataset 'nope'.*digits"):
        build_loaders(DataConfig(dataset="nope"), seed=0)


def test_adding_a_dataset_is_one_registered_class(tmp_path):
    @register_dataset("tiny_bars")
    class TinyBars(ImageDataset):
        folder = "TinyBars"
        files = ("bars.npy",)
        num_classes = 2
        input_shape = (1, 4, 4)

        def read(self, folder, split):
            n = 20 if split == "train" else 6
            y = np.arange(n) % 2
            x = np.zeros((n, 1, 4, 4), np.uint8)
            x[y == 0, :, :, 1] = 255  # vertical bar
            x[y == 1, :, 1, :] = 255  # horizontal bar
            return x, y

    try:
        (tmp_path / "TinyBars").mkdir()
        (tmp_path / "TinyBars" / "bars.npy").write_bytes(b"")
        b = build_loaders(DataConfig(dataset="tiny_bars", data_root=str(tmp_path), batch_size=4, time_steps=2), seed=0)
        x, y = next(iter(b.train))
        assert x.shape == (2, 4, 1, 4, 4) and b.num_classes == 2 and b.sizes == {"train": 18, "val": 2, "test": 6}
    finally:
        DATASETS.pop("tiny_bars", None)


# ----------------------------------------------------------------------------- roots and missing data
def test_data_root_precedence_and_search_path(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("SDSNN_DATA_ROOT", f"{a}{os.pathsep}{b}")
    assert data_roots() == [a, b]
    assert data_roots(str(tmp_path)) == [tmp_path]  # --data-root wins
    monkeypatch.delenv("SDSNN_DATA_ROOT")
    assert data_roots() == [Path("~/.cache/sdsnn/data").expanduser().absolute()]
    # a dataset is read from the first root that has it
    raw = b / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in get_dataset("mnist").files:
        (raw / name).write_bytes(b"")
    assert get_dataset("mnist").find(data_roots(f"{a}{os.pathsep}{b}")) == b


@pytest.mark.parametrize("name", ["mnist", "cifar10", "nmnist", "dvsgesture"])
def test_missing_dataset_fails_fast_with_one_line(tmp_path, name):
    empty = tmp_path / "empty"
    empty.mkdir()
    t0 = time.perf_counter()
    with pytest.raises(DatasetUnavailable) as err:
        build_loaders(DataConfig(dataset=name, data_root=str(empty)), seed=0)
    assert time.perf_counter() - t0 < 5  # generous bound; the figure is in the README
    msg = str(err.value)
    assert "\n" not in msg and name in msg and str(empty) in msg and "data fetch" in msg
    assert list(empty.iterdir()) == []  # nothing created in the data root
    with pytest.raises(DatasetUnavailable, match="not found in data root"):
        ensure_available(DataConfig(dataset=name, data_root=str(empty)))


def test_cli_fetch_without_network_exits_2_with_one_line_and_writes_nothing(tmp_path):
    empty = tmp_path / "root"
    empty.mkdir()
    res = CliRunner().invoke(cli_main, ["data", "fetch", "mnist", "--data-root", str(empty)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output
    for f in get_dataset("mnist").files:
        assert f in lines[0]
    assert str(empty / "MNIST" / "raw") in lines[0]
    assert list(empty.iterdir()) == []


def test_cli_check_reports_states_and_counts():
    if not SHARED:
        pytest.skip("no shared data root found (set SDSNN_DATA_ROOT)")
    res = CliRunner().invoke(cli_main, ["data", "check", "--data-root", SHARED])
    assert res.exit_code == 0, res.output
    rows = {ln.split()[0]: ln for ln in res.output.splitlines()[2:]}
    assert set(rows) == set(DATASETS)
    assert "1,797" in rows["digits"]
    roots = [Path(p).absolute() for p in SHARED.split(os.pathsep)]
    for name, want in {"mnist": "60,000 / 10,000", "cifar10": "50,000 / 10,000", "nmnist": "1,000 / 100"}.items():
        if get_dataset(name).find(roots) is not None:
            assert want in rows[name] and ("partial" in rows[name]) == (name == "nmnist")
    assert "absent" in rows["dvsgesture"]


# ----------------------------------------------------------------------------- real image data
def test_mnist_batches():
    root = _root_for("mnist")
    b = build_loaders(DataConfig(dataset="mnist", data_root=root, time_steps=2, batch_size=32, train_limit=2000, test_limit=500), seed=0)
    assert b.sizes == {"train": 1800, "val": 200, "test": 500} and b.input_shape == (1, 28, 28)
    x, y = next(iter(b.train))
    assert x.shape == (2, 32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(torch.cat([yb for _, yb in b.test]).tolist()) == set(range(10))


def test_cifar10_batches_normalised_and_augmented():
    root = _root_for("cifar10")
    cfg = DataConfig(dataset="cifar10", data_root=root, time_steps=2, batch_size=16, train_limit=600, test_limit=100)
    b = build_loaders(cfg, seed=0)
    assert b.input_shape == (3, 32, 32) and b.num_classes == 10 and b.sizes["test"] == 100
    x, y = next(iter(b.test))
    assert x.shape == (2, 100, 3, 32, 32) and int(y.max()) < 10
    assert abs(float(x.mean())) < 0.5 and float(x.min()) < -1.0  # mean/std normalised
    ba = build_loaders(cfg.model_copy(update={"augment": True}), seed=0)
    bb = build_loaders(cfg.model_copy(update={"augment": True}), seed=0)
    xa, ya = next(iter(ba.train))
    xb, yb = next(iter(bb.train))
    xn, yn = next(iter(b.train))
    assert torch.equal(xa, xb) and torch.equal(ya, yn)  # augmentation depends on (seed, epoch) only
    assert xa.shape == (2, 16, 3, 32, 32) and not torch.equal(xa, xn)


# ----------------------------------------------------------------------------- events
def test_nmnist_frames_and_cache_hit(data_cache_dir, monkeypatch):
    root = _root_for("nmnist")
    cfg = DataConfig(dataset="nmnist", data_root=root, time_steps=4, batch_size=16, train_limit=120, test_limit=40)
    b1 = build_loaders(cfg, seed=0, progress=False)
    assert b1.input_shape == (2, 34, 34) and not b1.static_input and b1.num_classes == 10
    assert b1.sizes == {"train": 108, "val": 12, "test": 40}
    x, y = next(iter(b1.train))
    assert x.shape == (4, 16, 2, 34, 34) and x.dtype == torch.float32 and float(x.sum()) > 0
    assert len(set(b1.train.y.tolist())) > 5  # train_limit keeps a mix of classes
    caches = sorted((data_cache_dir / "frames").glob("nmnist-*.npz"))
    assert len(caches) == 2  # one file per split
    mtimes = [c.stat().st_mtime_ns for c in caches]

    # second build: a cache hit, no recording is read again
    from sdsnn.data.events import _partial_tonic_class

    def boom(self, i):
        raise AssertionError("recording converted again despite the cache")

    monkeypatch.setattr(_partial_tonic_class("NMNIST", ".bin"), "__getitem__", boom)
    b2 = build_loaders(cfg, seed=0, progress=False)
    assert torch.equal(b1.train.x, b2.train.x) and torch.equal(b1.test.x, b2.test.x)
    assert [c.stat().st_mtime_ns for c in caches] == mtimes
    # anything that changes the frames changes the key
    with pytest.raises(AssertionError, match="converted again"):
        build_loaders(cfg.model_copy(update={"time_steps": 5}), seed=0, progress=False)


def test_validation_split_by_group_holds_out_whole_groups():
    groups = np.repeat(np.array(["u1", "u2", "u3", "u4", "u5"]), [30, 10, 25, 20, 15])  # n = 100
    for seed in range(20):
        tr, va = split_train_val(100, 0.2, seed=seed, groups=groups)
        assert not set(tr) & set(va) and set(tr) | set(va) == set(range(100))
        assert not set(groups[tr]) & set(groups[va])  # no subject on both sides
        assert len(va) >= 10 and set(groups[tr])  # a whole group at least; training keeps a subject
        assert all(np.array_equal(a, b) for a, b in zip((tr, va), split_train_val(100, 0.2, seed=seed, groups=groups)))
    assert len({tuple(split_train_val(100, 0.2, seed=s, groups=groups)[1]) for s in range(20)}) > 3
    # ten groups of ten: as many groups as come closest to the fraction, a tie to the larger
    tens = np.repeat(np.arange(10), 10)
    for frac, held in ((0.1, 10), (0.2, 20), (0.24, 20), (0.25, 30), (0.26, 30), (0.04, 10)):
        for seed in range(5):
            tr, va = split_train_val(100, frac, seed=seed, groups=tens)
            assert len(va) == held and not set(tens[tr]) & set(tens[va]), (frac, seed, len(va))
    # a fraction larger than all but one group still leaves one group for training
    tr, va = split_train_val(100, 0.95, seed=0, groups=groups)
    assert len(set(groups[tr])) == 1 and len(set(groups[va])) == 4
    # one group: nothing to hold out, so samples are split as without groups
    one = np.zeros(100, dtype=int)
    assert all(np.array_equal(a, b) for a, b in zip(split_train_val(100, 0.2, 3, groups=one), split_train_val(100, 0.2, 3)))
    with pytest.raises(ValueError, match="shape"):
        split_train_val(100, 0.2, 0, groups=groups[:50])


def _write_dvs(root: Path, users: dict[str, list[int]], n: int = 400, seed: int = 0) -> None:
    """Synthetic DVS-Gesture in tonic's layout: userNN_<lighting>/<label>.npy, (n, 4) x, y, p, t[ms]."""
    rng = np.random.default_rng(seed)
    for split, ids in users.items():
        for u in ids:
            d = root / "DVSGesture" / split / f"user{u:02d}_led"
            d.mkdir(parents=True)
            for label in range(11):
                ev = np.stack([rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n),
                               np.sort(rng.integers(0, 6000, n))], axis=1)
                ev[0] = (127, 0, 1, 0)  # a known corner event: lands at x=res-1, y=0, p=1, first bin
                np.save(d / f"{label}.npy", ev.astype(np.int64))


def test_dvsgesture_synthetic_through_tonic_layout(tmp_path, data_cache_dir):
    _write_dvs(tmp_path, {"ibmGestureTrain": [1, 2], "ibmGestureTest": [3]})
    before = sorted(p for p in tmp_path.rglob("*"))
    res = CliRunner().invoke(cli_main, ["data", "check", "dvsgesture", "--data-root", str(tmp_path)])
    assert res.exit_code == 0 and "partial" in res.output and "22 / 11" in res.output
    cfg = DataConfig(dataset="dvsgesture", data_root=str(tmp_path), time_steps=3, batch_size=8, resolution=32)
    b = build_loaders(cfg, seed=0, progress=False)
    # validation holds out a whole subject (user01 or user02), as the test set does (user03)
    assert b.num_classes == 11 and b.input_shape == (2, 32, 32) and b.sizes == {"train": 11, "val": 11, "test": 11}
    x, y = next(iter(b.train))
    assert x.shape == (3, 8, 2, 32, 32) and int(y.min()) >= 0 and int(y.max()) <= 10
    xt, yt = next(iter(b.test))
    assert torch.equal(yt, torch.arange(11))  # one recording per label, in fixed order
    assert bool((xt[0, :, 1, 0, 31] >= 1).all())  # the corner event after 128 -> 32 downsampling
    # events are conserved by ToFrame (up to tonic's handling of the very last timestamp)
    assert abs(float(xt.sum()) - 11 * 400) <= 11 * 2
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written into the data root
    assert len(list((data_cache_dir / "frames").glob("dvsgesture-*-T3-32-*.npz"))) == 2
    # denoising removes isolated random events
    bd = build_loaders(cfg.model_copy(update={"denoise_us": 1000.0}), seed=0, progress=False)
    assert float(bd.test.x.float().sum()) < 0.5 * float(xt.sum())


# ----------------------------------------------------------------------------- download path (local server)
def _idx_bytes(arr: np.ndarray) -> bytes:
    head = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def test_fetch_mnist_downloads_verifies_and_writes_atomically(tmp_path, monkeypatch):
    import gzip
    import hashlib
    import http.server
    import threading
    from functools import partial

    import sdsnn.data.images as images

    srv_dir = tmp_path / "srv"
    srv_dir.mkdir()
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(30) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(10),
    }
    md5 = {}
    for name, arr in arrays.items():
        blob = gzip.compress(_idx_bytes(arr))
        (srv_dir / (name + ".gz")).write_bytes(blob)
        md5[name] = hashlib.md5(blob).hexdigest()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    handler = partial(Quiet, directory=str(srv_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(images, "MNIST_URL", f"http://127.0.0.1:{server.server_address[1]}/")
        root = tmp_path / "root"
        # a wrong checksum: one-line error, nothing written
        monkeypatch.setattr(images, "MNIST_GZ_MD5", {**md5, "t10k-labels-idx1-ubyte": "0" * 32})
        res = CliRunner().invoke(cli_main, ["data", "fetch", "mnist", "--data-root", str(root)])
        assert res.exit_code == 2 and "md5 mismatch" in res.output and not root.exists()
        # the real thing
        monkeypatch.setattr(images, "MNIST_GZ_MD5", md5)
        res = CliRunner().invoke(cli_main, ["data", "fetch", "mnist", "--data-root", str(root)])
        assert res.exit_code == 0, res.output
    finally:
        server.shutdown()
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(arrays)
    b = build_loaders(DataConfig(dataset="mnist", data_root=str(root), val_fraction=0.1), seed=0)
    assert b.sizes == {"train": 27, "val": 3, "test": 10}
    assert torch.equal(b.test.y, torch.arange(10))
    x_test = next(iter(b.test))[0][0, :, 0]  # first time step, channel 0: [10, 28, 28]
    assert torch.allclose(x_test, torch.from_numpy(arrays["t10k-images-idx3-ubyte"] / 255.0).float(), atol=1e-6)


def test_event_frames_cache_key_follows_the_recordings_and_empty_recordings_load(tmp_path, data_cache_dir):
    """Found by an audit: the cache key held only relative paths and sizes, so another data root
    with the same layout (or a recording rewritten at the same size) got stale frames; and a
    recording without events crashed the conversion."""
    a, b = tmp_path / "a", tmp_path / "b"
    _write_dvs(a, {"ibmGestureTrain": [1], "ibmGestureTest": [2]}, seed=0)
    _write_dvs(b, {"ibmGestureTrain": [1], "ibmGestureTest": [2]}, seed=1)  # same layout and sizes
    cfg = DataConfig(dataset="dvsgesture", time_steps=2, batch_size=4, resolution=32)
    fa = build_loaders(cfg.model_copy(update={"data_root": str(a)}), seed=0, progress=False).test.x
    fb = build_loaders(cfg.model_copy(update={"data_root": str(b)}), seed=0, progress=False).test.x
    assert not torch.equal(fa, fb)
    _write_dvs(tmp_path / "c", {"ibmGestureTrain": [1], "ibmGestureTest": [2]}, seed=2)
    for f in (a / "DVSGesture" / "ibmGestureTest" / "user02_led").glob("*.npy"):  # rewrite in place
        f.write_bytes((tmp_path / "c" / f.relative_to(a)).read_bytes())
    fa2 = build_loaders(cfg.model_copy(update={"data_root": str(a)}), seed=0, progress=False).test.x
    assert not torch.equal(fa, fa2)
    # an empty recording gives empty frames, not a crash
    np.save(a / "DVSGesture" / "ibmGestureTest" / "user02_led" / "3.npy", np.zeros((0, 4), dtype=np.int64))
    fe = build_loaders(cfg.model_copy(update={"data_root": str(a)}), seed=0, progress=False).test.x
    assert float(fe[:, 3].sum()) == 0.0 and float(fe[:, 4].sum()) > 0


def test_event_resolution_is_the_width_and_height_keeps_the_aspect():
    from sdsnn.data.events import DVSGestureEvents

    class Davis346(DVSGestureEvents):  # a sensor that is not square: 346 x 260
        sensor_size = (346, 260, 2)

    ds = Davis346()
    assert ds.input_shape == (2, 260, 346)
    assert ds.shape_for(DataConfig(dataset="dvsgesture", resolution=173)) == (2, 130, 173)


def test_an_incomplete_image_dataset_names_the_missing_files(tmp_path):
    from sdsnn.data.registry import get_dataset

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte.gz"):
        (raw / f).write_bytes(b"")  # only the names matter here
    ds = get_dataset("mnist")
    st = ds.status([tmp_path])
    assert st.state == "absent" and st.note == f"incomplete in {raw}: missing t10k-labels-idx1-ubyte"
    msg = ds.missing_message([tmp_path])
    assert msg.startswith(f"dataset 'mnist' is incomplete in {raw}: missing t10k-labels-idx1-ubyte;") and "\n" not in msg
    # nothing there at all: the general message, with every expected file
    assert "expected train-images-idx3-ubyte" in ds.missing_message([tmp_path / "empty"])
