"""Saving and loading lstmc layers as ``.npz`` files (exported as
``lstmc.save`` / ``lstmc.load``).

The file is a plain, uncompressed NumPy ``.npz`` archive that needs no
pickle (``np.load(path, allow_pickle=False)`` reads it) and holds:

============  ===================  =========================================
key           value                meaning
============  ===================  =========================================
``format``    0-d str ``"lstmc"``  marks an lstmc weights file
``version``   0-d int ``1``        file layout version
``kind``      0-d str              ``"LSTM"`` or ``"TimeLSTM"``
``stateful``  0-d bool             ``TimeLSTM.stateful`` (False for LSTM)
``Wx``        (D, 4H) float        input weights, gates f, g, i, o
``Wh``        (H, 4H) float        recurrent weights
``b``         (4H,) float          bias
============  ===================  =========================================

``Wx``, ``Wh`` and ``b`` share one dtype, float32 or float64, which the
loaded layer keeps.  Gradients, caches and a TimeLSTM's held state ``h``,
``c`` are not saved: a loaded layer starts like a new one.
"""

import errno
import math
import os
import secrets
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy_format

from lstmc import _validate

__all__ = ["save", "load"]

_FORMAT = "lstmc"
_VERSION = 1
_KINDS = ("LSTM", "TimeLSTM")
_KEYS = ("format", "version", "kind", "stateful", "Wx", "Wh", "b")

# Errors that NumPy and zipfile raise on damaged archives or members.
_READ_ERRORS = (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile,
                zipfile.LargeZipFile, zlib.error, NotImplementedError)


def _describe(file):
    """How ``file`` is named in messages."""
    if isinstance(file, (str, bytes, os.PathLike)):
        return repr(os.fsdecode(file))
    name = getattr(file, "name", None)
    return repr(name) if isinstance(name, str) else "the file object"


def _capacity(info):
    """The most bytes zip member ``info`` can really give when read: what its
    header says, bounded by what its compressed data can hold (deflate
    expands at most about 1032:1; other methods are not bounded here)."""
    if info.compress_type == zipfile.ZIP_STORED:
        return min(info.file_size, info.compress_size)
    if info.compress_type == zipfile.ZIP_DEFLATED:
        return min(info.file_size, 1032 * info.compress_size + 1024)
    return info.file_size


def _check_size(npz, key):
    """``ValueError`` when the ``.npy`` header of member ``key`` claims more
    data than the member holds, read before NumPy allocates the array (a small
    damaged file must not ask for terabytes).  Members that are not ``.npy``
    are left to ``np.load`` to report."""
    names = npz.zip.namelist()
    name = key + ".npy" if key + ".npy" in names else key
    info = npz.zip.getinfo(name)
    with npz.zip.open(info) as member:
        try:
            version = npy_format.read_magic(member)
        except ValueError:
            return  # not .npy: np.load returns bytes, _member refuses them
        read_header = (npy_format.read_array_header_1_0 if version == (1, 0)
                       else npy_format.read_array_header_2_0)
        shape, _, dtype = read_header(member)
        offset = member.tell()
    if dtype.hasobject:
        return  # refused by allow_pickle=False
    nbytes = math.prod(shape) * dtype.itemsize
    available = max(0, _capacity(info) - offset)
    if nbytes > available:
        raise ValueError(
            f"its header claims shape {shape} of {dtype} ({nbytes:,} bytes), "
            f"but the archive member holds at most {available:,} bytes")


def _member(npz, key, where):
    """``npz[key]``, with a damaged member reported as ``ValueError``."""
    try:
        _check_size(npz, key)
        arr = npz[key]
    except _READ_ERRORS as exc:
        raise ValueError(
            f"{where} is not a valid lstmc weights file: cannot read "
            f"{key!r} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(arr, np.ndarray):  # a zip member that is not .npy
        raise ValueError(
            f"{where} is not a valid lstmc weights file: {key!r} is not a "
            "NumPy array")
    return arr


def _check_weights(Wx, Wh, b, where):
    """``ValueError`` unless ``Wx``, ``Wh``, ``b`` are lstmc weights: the
    layers' own check, its message prefixed with ``where`` (a bad file is a
    ValueError, whatever is wrong in it)."""
    try:
        _validate.weights(Wx, Wh, b)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _layer_kind(layer):
    """``"LSTM"`` or ``"TimeLSTM"`` for an lstmc layer, else ``TypeError``."""
    import lstmc

    if isinstance(layer, lstmc.TimeLSTM):
        return "TimeLSTM"
    if isinstance(layer, lstmc.LSTM):
        return "LSTM"
    raise TypeError(
        "save() takes an lstmc.LSTM or lstmc.TimeLSTM, got "
        f"{type(layer).__module__}.{type(layer).__qualname__}")


def save(path, layer):
    """Write ``layer``'s weights, kind and ``stateful`` flag to ``path``.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        Written exactly as given (unlike ``np.savez``, no ``.npz`` suffix is
        appended), so ``load(path)`` finds it.  An existing file is replaced
        atomically: the archive is written to a temporary file in the same
        directory (``.<name>.<random>.tmp``), flushed to disk, then renamed
        over ``path``.  A file object is written to directly.
    layer : lstmc.LSTM or lstmc.TimeLSTM

    The layer is checked before any file is created, and a write that fails
    (disk full, Ctrl-C) removes the temporary file: a failing call leaves an
    existing file at ``path`` as it was.  See the module docstring for the
    layout.
    """
    kind = _layer_kind(layer)
    Wx, Wh, b = (np.asarray(p) for p in layer.params)
    _check_weights(Wx, Wh, b, "cannot save layer")
    stateful = bool(getattr(layer, "stateful", False)) \
        if kind == "TimeLSTM" else False
    arrays = dict(
        format=np.array(_FORMAT),
        version=np.array(_VERSION, dtype=np.int64),
        kind=np.array(kind),
        stateful=np.array(stateful),
        Wx=Wx, Wh=Wh, b=b,
    )
    if hasattr(path, "write"):
        np.savez(path, **arrays)
        return
    _write_atomic(os.fsdecode(os.fspath(path)), arrays)


def _write_atomic(path, arrays):
    """``np.savez`` into a new file next to ``path``, renamed over ``path``
    once complete: readers see the old file or the new one, never a part."""
    if os.path.islink(path):
        path = os.path.realpath(path)  # replace the file, not the link
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    directory, base = os.path.split(path)
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")
        try:  # mode 0o666 less the umask, as open() would create it
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())  # a full disk shows here at the latest
        try:  # keep the permissions of the file being replaced
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _scalar(npz, key, kinds, where):
    """The 0-d array ``npz[key]`` as a Python scalar, checked for its kind."""
    arr = _member(npz, key, where)
    if arr.shape != () or arr.dtype.kind not in kinds:
        raise ValueError(
            f"{where}: {key!r} must be a 0-d array of kind {kinds!r}, "
            f"got shape {arr.shape} and dtype {arr.dtype}")
    return arr.item()


def _read(npz, where):
    """The validated ``(kind, stateful, Wx, Wh, b)`` of an open archive."""
    keys = set(npz.files)
    missing = [k for k in _KEYS if k not in keys]
    unexpected = sorted(keys.difference(_KEYS))
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        raise ValueError(
            f"{where} is not an lstmc weights file: {'; '.join(problems)} "
            f"(found {sorted(keys)}, expected {list(_KEYS)})")
    fmt = _scalar(npz, "format", "U", where)
    if fmt != _FORMAT:
        raise ValueError(
            f"{where}: 'format' is {fmt!r}, expected {_FORMAT!r}")
    version = _scalar(npz, "version", "iu", where)
    if version != _VERSION:
        raise ValueError(
            f"{where}: file version {version} is not supported "
            f"(this lstmc reads version {_VERSION})")
    kind = _scalar(npz, "kind", "U", where)
    if kind not in _KINDS:
        raise ValueError(
            f"{where}: 'kind' is {kind!r}, expected one of {list(_KINDS)}")
    stateful = _scalar(npz, "stateful", "b", where)
    if kind == "LSTM" and stateful:
        raise ValueError(f"{where}: 'stateful' is True for kind 'LSTM'")
    weights = []
    for key in ("Wx", "Wh", "b"):
        arr = _member(npz, key, where)
        if arr.dtype.kind == "f" and not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        weights.append(np.ascontiguousarray(arr))
    _check_weights(*weights, where)
    return kind, stateful, weights


def load(path):
    """Read a layer written by :func:`save`; return a new layer of its kind.

    Parameters
    ----------
    path : str, os.PathLike or binary file object

    Returns
    -------
    lstmc.LSTM or lstmc.TimeLSTM
        Built on the stored weights (their dtype kept), with the stored
        ``stateful`` flag, no held state and zero gradients.

    Raises
    ------
    ValueError
        If the file is not an lstmc weights file: not a zip/npz archive,
        truncated or corrupt, missing or unexpected keys, wrong dtypes,
        ndims or inconsistent shapes.  The message says what is wrong.
    FileNotFoundError, PermissionError
        As ``open`` raises them.
    """
    where = _describe(path)
    if hasattr(path, "read"):
        kind, stateful, (Wx, Wh, b) = _load_file(path, where)
    else:
        with open(os.fspath(path), "rb") as fh:
            kind, stateful, (Wx, Wh, b) = _load_file(fh, where)
    import lstmc

    if kind == "TimeLSTM":
        return lstmc.TimeLSTM(Wx, Wh, b, stateful=stateful)
    return lstmc.LSTM(Wx, Wh, b)


def _load_file(fh, where):
    start = fh.tell() if hasattr(fh, "tell") else 0
    magic = fh.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        what = ("empty" if not magic else
                "a .npy array, not an .npz archive"
                if magic == b"\x93NUM" else "not a zip (.npz) archive")
        raise ValueError(f"{where} is not an lstmc weights file: it is {what}")
    fh.seek(start)
    try:
        npz = np.load(fh, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise ValueError(
            f"{where} is not a valid lstmc weights file (truncated or "
            f"corrupt archive): {type(exc).__name__}: {exc}") from exc
    with npz:
        return _read(npz, where)
