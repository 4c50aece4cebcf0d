"""Public datasets by name: ``cifar10``, ``cifar100``, ``mnist``, ``fashion-mnist``.

Each is a catalogue entry (plain data, like the pretrained-weights catalogue): the publisher's files with
their sha256 and size, the mirrors tried in order, and how the files are laid out. The files are fetched once
into ``$CNNLAB_CACHE/datasets/<name>/`` by cnnlab.download (resume, checksum, atomic rename, the same
downloader as the weights) and decoded from there with numpy on every load; nothing is extracted to disk and
nothing is unpickled.

- CIFAR-10/100 come from their *binary* releases: fixed-size records (label byte(s), then 3072 bytes: the
  red, green and blue 32x32 planes), read member by member from the .tar.gz stream; only the expected member
  names are read.
- MNIST and Fashion-MNIST come from their gzipped IDX files, whose big-endian headers (magic 2051 for images,
  2049 for labels, then the dimensions) are checked against the file's length and the partner file's count.

The official test split is the test split; `load_dataset` splits validation off train as for any source.
Decoded arrays are not cached: decoding CIFAR-10 from its tar.gz takes about 1 s here (0.9 s of it is
gunzip), an .npz of the arrays loads in 0.1 s but costs another 184 MB on disk and has to be kept in step
with its source; a second per load is not worth that.
"""

from __future__ import annotations

import dataclasses
import gzip
import struct
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np

from cnnlab.data.dataset import Dataset, Split
from cnnlab.download import cache_dir, download
from cnnlab.errors import DataError, DownloadError

IDX_IMAGES, IDX_LABELS = 2051, 2049  # magic numbers: unsigned bytes, 3 dimensions / 1 dimension
MAX_IDX_BYTES = 256 << 20  # decompressed; MNIST's train images are 47 MB
CIFAR_PIXELS = 32 * 32 * 3


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    name: str  # its name in the cache folder, as the publisher names it
    sha256: str
    size_bytes: int
    urls: tuple[str, ...]  # mirrors, tried in order; every one must serve these exact bytes


@dataclasses.dataclass(frozen=True)
class PublicDataset:
    name: str  # the key in --data, config files and model files
    title: str
    layout: str  # "cifar" (binary records in a .tar.gz) or "idx" (gzipped IDX images + labels)
    files: tuple[RemoteFile, ...]
    # cifar: (split, the archive's members holding it); idx: (split, (images file, labels file))
    splits: tuple[tuple[str, tuple[str, ...]], ...]
    num_classes: int
    class_names: tuple[str, ...] = ()  # idx: the publisher's names; cifar: read from `names_member`
    names_member: str = ""  # cifar: the member with one class name per line
    label_bytes: int = 1  # cifar: label bytes before each image; the last one is the class (CIFAR-100: coarse, fine)
    homepage: str = ""


_TORONTO = "https://www.cs.toronto.edu/~kriz/"
_MNIST_MIRRORS = ("https://storage.googleapis.com/cvdf-datasets/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
# The S3 website endpoint Zalando publishes is http only (S3 website endpoints have no TLS); the sha256 pins the
# bytes either way. Their GitHub repository holds the same files under data/fashion (README, "Get the Data").
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")


def _idx_files(mirrors: tuple[str, ...], sums: dict[str, tuple[int, str]]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(name, sha, size, tuple(m + name for m in mirrors)) for name, (size, sha) in sums.items())


_IDX_SPLITS = (("train", ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")),
               ("test", ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")))

CATALOGUE: dict[str, PublicDataset] = {d.name: d for d in (
    PublicDataset(
        "cifar10", "CIFAR-10", "cifar",
        # size and sha256: https://github.com/tensorflow/datasets/blob/333639b37af6c6fedf3610a4a2d42f1c6ef6f7d5/tensorflow_datasets/url_checksums/cifar10.txt
        (RemoteFile("cifar-10-binary.tar.gz", "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
                    170_052_171, (_TORONTO + "cifar-10-binary.tar.gz",)),),
        (("train", tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6))),
         ("test", ("cifar-10-batches-bin/test_batch.bin",))),
        10, names_member="cifar-10-batches-bin/batches.meta.txt", homepage="https://www.cs.toronto.edu/~kriz/cifar.html"),
    PublicDataset(
        "cifar100", "CIFAR-100", "cifar",
        # size and sha256: https://github.com/tensorflow/datasets/blob/333639b37af6c6fedf3610a4a2d42f1c6ef6f7d5/tensorflow_datasets/url_checksums/cifar100.txt
        (RemoteFile("cifar-100-binary.tar.gz", "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
                    168_513_733, (_TORONTO + "cifar-100-binary.tar.gz",)),),
        (("train", ("cifar-100-binary/train.bin",)), ("test", ("cifar-100-binary/test.bin",))),
        100, names_member="cifar-100-binary/fine_label_names.txt", label_bytes=2,
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html"),
    PublicDataset(
        "mnist", "MNIST", "idx",
        # sizes and sha256 (the cvdf mirror): https://github.com/tensorflow/datasets/blob/31f1255e57e519a6c004f0b097a2f5cfcf0dde7d/tensorflow_datasets/url_checksums/mnist.txt
        # the same sha256 for the ossci mirror: https://github.com/ankane/torchvision-ruby lib/torchvision/datasets/mnist.rb
        _idx_files(_MNIST_MIRRORS, {
            "train-images-idx3-ubyte.gz": (9_912_422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            "train-labels-idx1-ubyte.gz": (28_881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            "t10k-images-idx3-ubyte.gz": (1_648_877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            "t10k-labels-idx1-ubyte.gz": (4_542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        }),
        _IDX_SPLITS, 10, tuple(str(i) for i in range(10)), homepage="http://yann.lecun.com/exdb/mnist/"),
    PublicDataset(
        "fashion-mnist", "Fashion-MNIST", "idx",
        # sizes and sha256: https://github.com/tensorflow/datasets/blob/333639b37af6c6fedf3610a4a2d42f1c6ef6f7d5/tensorflow_datasets/url_checksums/fashion_mnist.txt
        _idx_files(_FASHION_MIRRORS, {
            "train-images-idx3-ubyte.gz": (26_421_880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            "train-labels-idx1-ubyte.gz": (29_515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            "t10k-images-idx3-ubyte.gz": (4_422_102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            "t10k-labels-idx1-ubyte.gz": (5_148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        }),
        _IDX_SPLITS, 10, ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                          "Ankle boot"),  # the label table of Fashion-MNIST's README
        homepage="https://github.com/zalandoresearch/fashion-mnist"),
)}

ALIASES = {"cifar-10": "cifar10", "cifar-100": "cifar100", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}
BUILTIN_PREFIX = "builtin:"


def match(spec: str) -> str | None:
    """The catalogue name `spec` asks for, or None when it names no public dataset.

    ``builtin:mnist`` always means the public dataset; a plain ``mnist`` only when no file or folder of that
    name exists here, so a local dataset folder that happens to be called ``mnist/`` is loaded as a folder.
    Names are case-insensitive and take the usual spellings (``cifar-10``, ``fashion_mnist``).
    """
    text = str(spec).strip()
    prefixed = text.lower().startswith(BUILTIN_PREFIX)
    key = (text[len(BUILTIN_PREFIX):] if prefixed else text).lower()
    name = ALIASES.get(key, key)
    if name not in CATALOGUE:
        return None
    if not prefixed and Path(text).expanduser().exists():
        return None
    return name


def dataset_folder(entry: PublicDataset) -> Path:
    return cache_dir("datasets") / entry.name


def load(name: str, spec: str | None = None, classes: list[str] | None = None, labels: object = None) -> Dataset:
    """Fetch (once) and decode the public dataset `name`: train and test splits of uint8 (N, H, W, C) images."""
    entry = CATALOGUE[name]
    spec = spec or name
    if labels is not None:
        raise DataError(f"{spec}: --labels does not apply — {entry.title} comes with its own labels; drop --labels")
    paths = fetch(entry)
    if entry.layout == "cifar":
        raw, class_names = _read_cifar(entry, paths[entry.files[0].name])
    else:
        raw, class_names = _read_idx_pairs(entry, paths), list(entry.class_names)
    if classes is not None and list(classes) != class_names:
        shown = ", ".join(class_names[:5]) + (", …" if len(class_names) > 5 else "")
        raise DataError(f"{spec}: --classes does not apply — {entry.title} names its own {len(class_names)} classes ({shown}); drop --classes")
    splits = {split: Split(x, y) for split, (x, y) in raw.items()}
    return Dataset(spec, class_names, splits, source_format=f"public-{entry.name}")


def fetch(entry: PublicDataset, timeout_s: float = 30.0) -> dict[str, Path]:
    """{file name: verified path in the cache} for every file of `entry`, downloading those not there yet."""
    folder = dataset_folder(entry)
    out: dict[str, Path] = {}
    for i, f in enumerate(entry.files):
        dest = folder / f.name
        try:
            out[f.name] = download(f.urls, dest, f.sha256, f.size_bytes, timeout_s=timeout_s,
                                   progress=_Progress(f"{entry.title} {f.name}", dest), what=f"{entry.title} file {f.name}")
        except DownloadError as e:
            rest = [g.name for g in entry.files[i + 1:] if not (folder / g.name).is_file()]
            if not rest:
                raise
            raise DownloadError(f"{e}; {entry.title} also needs {', '.join(rest)} in {folder} (same mirrors)") from None
    return out


class _Progress:
    """One line on stderr when a download starts (never for a cached file); a live percentage on a terminal."""

    def __init__(self, label: str, dest: Path):
        self.label, self.dest = label, dest
        self.started = False
        self.tty = sys.stderr.isatty()
        self.percent = -1

    def __call__(self, done: int, total: int | None) -> None:
        if not self.started:
            self.started = True
            size = f" ({total / 2**20:.1f} MiB)" if total else ""
            resume = f", resuming after {done / 2**20:.1f} MiB" if done else ""
            print(f"downloading {self.label}{size} into {self.dest}{resume}", file=sys.stderr, flush=True)
        if self.tty and total:
            percent = 100 * done // total
            if percent != self.percent:
                self.percent = percent
                sys.stderr.write(f"\r  {percent}%" + ("\n" if done >= total else ""))
                sys.stderr.flush()


# ---------------------------------------------------------------- CIFAR binary release


def _read_cifar(entry: PublicDataset, archive: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Decode the records of a CIFAR binary .tar.gz, reading its members in one pass over the stream."""
    record = entry.label_bytes + CIFAR_PIXELS
    wanted = {member for _, members in entry.splits for member in members}
    records: dict[str, np.ndarray] = {}
    names_text: bytes | None = None
    redo = "delete it and load again to download it afresh"
    try:
        with tarfile.open(archive, "r|gz") as tar:  # a stream: members are read in archive order, never extracted
            for m in tar:
                name = m.name.removeprefix("./")
                if not m.isfile() or (name not in wanted and name != entry.names_member):
                    continue  # readme.html, folders, and anything unexpected (links included) are not read
                if name == entry.names_member:
                    if m.size > 1 << 20:
                        raise DataError(f"{archive}: {m.name} holds {m.size} bytes — too big for a list of class names; {redo}")
                    names_text = tar.extractfile(m).read()
                    continue
                if m.size == 0 or m.size % record:
                    raise DataError(f"{archive}: {m.name} holds {m.size} bytes, not whole {record}-byte records "
                                    f"({entry.label_bytes} label byte(s) + {CIFAR_PIXELS} pixels) — not {entry.title}'s binary release; {redo}")
                data = tar.extractfile(m).read()
                if len(data) != m.size:
                    raise DataError(f"{archive}: {m.name} ends after {len(data)} of {m.size} bytes — the archive is truncated; {redo}")
                records[name] = np.frombuffer(data, np.uint8).reshape(-1, record)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive}: not a readable .tar.gz ({_first_line(e)}) — {redo}") from None
    missing = [m for m in sorted(wanted) if m not in records] + ([entry.names_member] if names_text is None else [])
    if missing:
        raise DataError(f"{archive}: has no {missing[0]} — not {entry.title}'s binary release ({entry.files[0].name}); {redo}")
    class_names = _class_names(names_text, entry, archive)
    out = {}
    for split, members in entry.splits:
        rows = np.concatenate([records[m] for m in members]) if len(members) > 1 else records[members[0]]
        y = rows[:, entry.label_bytes - 1].astype(np.int64)
        if y.max(initial=0) >= entry.num_classes:
            i = int(np.argmax(y >= entry.num_classes))
            raise DataError(f"{archive}: {split} record {i} has label {y[i]} but {entry.title} has {entry.num_classes} classes — "
                            f"the file is damaged; {redo}")
        # records hold the red, green and blue 32x32 planes in turn: (N, C, H, W) -> the (N, H, W, C) every source gives
        x = np.ascontiguousarray(rows[:, entry.label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        out[split] = (x, y)
        del rows
    return out, class_names


def _class_names(text: bytes | None, entry: PublicDataset, archive: Path) -> list[str]:
    try:
        names = [ln.strip() for ln in (text or b"").decode("utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError:
        names = []
    if len(names) != entry.num_classes:
        raise DataError(f"{archive}: {entry.names_member} names {len(names)} classes, expected {entry.num_classes} (one per line) — "
                        "delete it and load again to download it afresh")
    return names


# ---------------------------------------------------------------- IDX (MNIST and Fashion-MNIST)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of a gzipped IDX file, after checking its magic number and that its length fits its header."""
    what = "images" if magic == IDX_IMAGES else "labels"
    redo = "delete it and load again to download it afresh"
    try:
        with gzip.open(path, "rb") as f:
            data = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable .gz file ({_first_line(e)}) — {redo}") from None
    if len(data) > MAX_IDX_BYTES:
        raise DataError(f"{path}: unpacks to more than {MAX_IDX_BYTES >> 20} MiB — not an MNIST-style IDX file; {redo}")
    ndim = 3 if magic == IDX_IMAGES else 1
    head = 4 + 4 * ndim
    if len(data) < head:
        raise DataError(f"{path}: unpacks to {len(data)} bytes, too few for an IDX {what} header — the file is truncated or "
                        f"not an IDX file; {redo}")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise DataError(f"{path}: IDX magic number is {got}, expected {magic} (uint8 {what}, {ndim} dimension(s)) — "
                        f"not an IDX {what} file; {redo}")
    dims = struct.unpack(f">{ndim}I", data[4:head])
    n_bytes = int(np.prod(dims, dtype=np.int64))
    if 0 in dims:
        raise DataError(f"{path}: the IDX header declares {' x '.join(map(str, dims))} {what}: none — {redo}")
    if len(data) - head != n_bytes:
        raise DataError(f"{path}: the IDX header declares {' x '.join(map(str, dims))} {what} ({n_bytes} bytes) but "
                        f"{len(data) - head} bytes follow — the file is truncated or damaged; {redo}")
    return np.frombuffer(data, np.uint8, offset=head).reshape(dims).copy()  # a writable array, like other sources


def _read_idx_pairs(entry: PublicDataset, paths: dict[str, Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split, (images_name, labels_name) in entry.splits:
        x = read_idx(paths[images_name], IDX_IMAGES)
        y = read_idx(paths[labels_name], IDX_LABELS).astype(np.int64)
        if len(x) != len(y):
            raise DataError(f"{paths[images_name]}: holds {len(x)} images but {labels_name} holds {len(y)} labels — "
                            "one of them is damaged; delete both and load again")
        if y.max(initial=0) >= entry.num_classes:
            i = int(np.argmax(y >= entry.num_classes))
            raise DataError(f"{paths[labels_name]}: label {y[i]} (item {i}) but {entry.title} has {entry.num_classes} classes — "
                            "the file is damaged; delete it and load again")
        out[split] = (x[..., None], y)  # grey: one channel
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else e.__class__.__name__)[:80]
