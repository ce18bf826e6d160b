"""Saving and loading lstmc layers and stacks as ``.npz`` files (exported
as ``lstmc.save`` / ``lstmc.load``).

The file is a plain, uncompressed NumPy ``.npz`` archive that needs no
pickle (``np.load(path, allow_pickle=False)`` reads it).  Every file holds:

============  ===================  =========================================
key           value                meaning
============  ===================  =========================================
``format``    0-d str ``"lstmc"``  marks an lstmc weights file
``version``   0-d int ``1``        file layout version
``kind``      0-d str              ``"LSTM"``, ``"TimeLSTM"`` or
                                   ``"StackedLSTM"``
============  ===================  =========================================

and, for an ``LSTM`` or a ``TimeLSTM``:

============  ===================  =========================================
``stateful``  0-d bool             ``TimeLSTM.stateful`` (False for LSTM)
``reverse``   0-d bool             ``TimeLSTM.reverse``: written only when True
                                   (absent: False, as in files from before it)
``Wx``        (D, 4H) float        input weights, gates f, g, i, o
``Wh``        (H, 4H) float        recurrent weights
``b``         (4H,) float          bias
============  ===================  =========================================

or, for a ``StackedLSTM`` of L layers (k = 0 ... L-1):

=================  ==============  ======================================
``num_layers``     0-d int         L >= 1
``bidirectional``  0-d bool        whether each layer has a reverse direction
``Wx_l{k}``        (D_k, 4H)       layer k, forward direction: input weights
``Wh_l{k}``        (H, 4H)         recurrent weights
``b_l{k}``         (4H,)           bias
``Wx_l{k}_reverse``, ...           the reverse direction's three arrays
                                   (bidirectional files only)
=================  ==============  ======================================

where D_0 is the model's input width and D_k = H * (2 if bidirectional
else 1) for k > 0 (a layer reads the previous layer's output).  The
``StackedLSTM`` kind was added without changing the layout of the other two,
so the version stays 1: files written before it load as they did, and an
lstmc older than ``StackedLSTM`` refuses a stack's file (missing keys).

All weights share one dtype, float32 or float64, which the loaded layer or
stack keeps.  Gradients, caches and held states (``h``, ``c``) are not saved:
a loaded object starts like a new one.
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
_KINDS = ("LSTM", "TimeLSTM", "StackedLSTM")
_KEYS = ("format", "version", "kind", "stateful", "Wx", "Wh", "b")
_STACKED_KEYS = ("format", "version", "kind", "num_layers", "bidirectional")

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


def _check_weights(Wx, Wh, b, where, names=("Wx", "Wh", "b")):
    """``ValueError`` unless ``Wx``, ``Wh``, ``b`` are lstmc weights: the
    layers' own check, its message prefixed with ``where`` (a bad file is a
    ValueError, whatever is wrong in it); ``names`` are the arrays' keys.
    Returns ``(dtype, D, H)``."""
    try:
        _, dtype, D, H = _validate.weights(Wx, Wh, b, names=names)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    return dtype, D, H


def _stack_keys(k, reverse):
    """The keys of layer ``k``'s weights in one direction."""
    suffix = f"_l{k}" + ("_reverse" if reverse else "")
    return tuple(name + suffix for name in ("Wx", "Wh", "b"))


def _check_stack(layers, bidirectional, where):
    """``ValueError`` unless ``layers`` (a list of ``[forward]`` or
    ``[forward, reverse]`` weight triples, one per layer) form one stack: each
    triple valid, one dtype, one H, layer k > 0 as wide as layer k-1's output,
    both directions of a layer on the same input width."""
    dirs = 2 if bidirectional else 1
    first = None          # (dtype, H) of Wx_l0, what every other array must match
    for k, directions in enumerate(layers):
        for reverse, triple in enumerate(directions):
            names = _stack_keys(k, reverse)
            dtype, D, H = _check_weights(*triple, where, names=names)
            if first is None:
                first, D0 = (dtype, H), D
                continue
            if dtype != first[0]:
                raise ValueError(f"{where}: {names[0]} has dtype {dtype}; expected "
                                 f"{first[0]}, the dtype of Wx_l0 (all weights of a "
                                 "stack share one dtype)")
            if H != first[1]:
                raise ValueError(f"{where}: {names[1]} has shape {triple[1].shape}; "
                                 f"expected (H, 4*H) = {(first[1], 4 * first[1])}, the "
                                 "hidden size of layer 0 (all layers share one H)")
            want = D0 if k == 0 else dirs * H
            if D != want:
                why = ("the input width of Wx_l0" if k == 0 else
                       f"layer {k - 1}'s output width, {dirs} * H")
                raise ValueError(f"{where}: {names[0]} has shape {triple[0].shape}; "
                                 f"expected (D, 4*H) = {(want, 4 * H)} with D = {why}")


def _kind(obj):
    """``"LSTM"``, ``"TimeLSTM"`` or ``"StackedLSTM"`` for an lstmc layer or
    stack, else ``TypeError``."""
    import lstmc

    if isinstance(obj, lstmc.TimeLSTM):
        return "TimeLSTM"
    if isinstance(obj, lstmc.LSTM):
        return "LSTM"
    if isinstance(obj, lstmc.StackedLSTM):
        return "StackedLSTM"
    raise TypeError(
        "save() takes an lstmc.LSTM or lstmc.TimeLSTM layer, or an "
        "lstmc.StackedLSTM; got "
        f"{type(obj).__module__}.{type(obj).__qualname__}")


def _layer_arrays(layer, kind):
    """The archive members of a checked LSTM or TimeLSTM."""
    Wx, Wh, b = (np.asarray(p) for p in layer.params)
    _check_weights(Wx, Wh, b, "cannot save layer")
    stateful = bool(getattr(layer, "stateful", False)) \
        if kind == "TimeLSTM" else False
    arrays = dict(stateful=np.array(stateful), Wx=Wx, Wh=Wh, b=b)
    if kind == "TimeLSTM" and getattr(layer, "reverse", False):
        arrays["reverse"] = np.array(True)
    return arrays


def _stacked_arrays(model):
    """The archive members of a checked StackedLSTM."""
    bidirectional = bool(model.bidirectional)
    layers = []
    for entry in model.weights():
        directions = (entry,) if not bidirectional else entry
        layers.append([tuple(np.asarray(a) for a in triple) for triple in directions])
    _check_stack(layers, bidirectional, "cannot save model")
    arrays = dict(num_layers=np.array(len(layers), dtype=np.int64),
                  bidirectional=np.array(bidirectional))
    for k, directions in enumerate(layers):
        for reverse, triple in enumerate(directions):
            arrays.update(zip(_stack_keys(k, reverse), triple))
    return arrays


def save(path, obj):
    """Write a layer's or a stack's weights and kind to ``path``.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        Written exactly as given (unlike ``np.savez``, no ``.npz`` suffix is
        appended), so ``load(path)`` finds it.  An existing file is replaced
        atomically: the archive is written to a temporary file in the same
        directory (``.<name>.<random>.tmp``), flushed to disk, then renamed
        over ``path``.  A file object is written to directly.
    obj : lstmc.LSTM, lstmc.TimeLSTM or lstmc.StackedLSTM
        A TimeLSTM's ``stateful`` flag is kept; a stack's layers and
        directions are kept (``StackedLSTM.weights()``).

    The object is checked before any file is created, and a write that fails
    (disk full, Ctrl-C) removes the temporary file: a failing call leaves an
    existing file at ``path`` as it was.  See the module docstring for the
    layout.
    """
    kind = _kind(obj)
    arrays = dict(
        format=np.array(_FORMAT),
        version=np.array(_VERSION, dtype=np.int64),
        kind=np.array(kind),
    )
    arrays.update(_stacked_arrays(obj) if kind == "StackedLSTM"
                  else _layer_arrays(obj, kind))
    if hasattr(path, "write"):
        np.savez(path, **arrays)
        return
    write_atomic(os.fsdecode(os.fspath(path)), lambda fh: np.savez(fh, **arrays))


def write_atomic(path, write):
    """``write(fh)`` into a new file next to ``path``, renamed over ``path``
    once complete: readers see the old file or the new one, never a part (also
    what ``python -m lstmc convert`` writes its .onnx files with)."""
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
            write(fh)
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


def _expected_keys(npz, where):
    """The keys the archive must hold: those of its stored kind when that
    reads as a known kind, else those of a single layer (the check of the
    keys then says what is missing)."""
    keys = set(npz.files)
    kind = None
    if "kind" in keys:
        arr = _member(npz, "kind", where)
        if arr.shape == () and arr.dtype.kind == "U":
            kind = arr.item()
            if kind not in _KINDS:
                raise ValueError(
                    f"{where}: 'kind' is {kind!r}, expected one of {list(_KINDS)}")
    if kind == "TimeLSTM" and "reverse" in keys:
        return _KEYS + ("reverse",)
    if kind != "StackedLSTM":
        return _KEYS
    if "num_layers" not in keys or "bidirectional" not in keys:
        # name only the missing fixed keys, not every layer's arrays
        return _STACKED_KEYS + tuple(sorted(keys.difference(_STACKED_KEYS)))
    num_layers, bidirectional = _stack_shape(npz, where)
    if num_layers > len(keys):
        raise ValueError(
            f"{where}: 'num_layers' is {num_layers}, but the archive holds only "
            f"{len(keys)} arrays (3 per layer and direction)")
    return _STACKED_KEYS + tuple(
        key for k in range(num_layers) for reverse in range(1 + bidirectional)
        for key in _stack_keys(k, reverse))


def _stack_shape(npz, where):
    """``(num_layers, bidirectional)`` of a StackedLSTM archive, checked."""
    num_layers = _scalar(npz, "num_layers", "iu", where)
    if num_layers < 1:
        raise ValueError(f"{where}: 'num_layers' is {num_layers}, expected >= 1")
    return num_layers, _scalar(npz, "bidirectional", "b", where)


def _weights_member(npz, key, where):
    """A weights array of the archive, in native byte order, C-contiguous."""
    arr = _member(npz, key, where)
    if arr.dtype.kind == "f" and not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def _check_format(npz, where):
    """``ValueError`` unless the archive says it is an lstmc file of the
    version this lstmc reads."""
    fmt = _scalar(npz, "format", "U", where)
    if fmt != _FORMAT:
        raise ValueError(
            f"{where}: 'format' is {fmt!r}, expected {_FORMAT!r}")
    version = _scalar(npz, "version", "iu", where)
    if version != _VERSION:
        raise ValueError(
            f"{where}: file version {version} is not supported "
            f"(this lstmc reads version {_VERSION})")


def _read(npz, where):
    """The validated ``(kind, content)`` of an open archive: for a layer,
    content is ``(stateful, reverse, [Wx, Wh, b])``; for a stack, the constructor list
    of :class:`lstmc.StackedLSTM`."""
    keys = set(npz.files)
    if "format" in keys and "version" in keys:   # before the keys, which depend on them
        _check_format(npz, where)
    expected = _expected_keys(npz, where)
    missing = [k for k in expected if k not in keys]
    unexpected = sorted(keys.difference(expected))
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        raise ValueError(
            f"{where} is not an lstmc weights file: {'; '.join(problems)} "
            f"(found {sorted(keys)}, expected {list(expected)})")
    kind = _scalar(npz, "kind", "U", where)
    if kind not in _KINDS:
        raise ValueError(
            f"{where}: 'kind' is {kind!r}, expected one of {list(_KINDS)}")
    if kind == "StackedLSTM":
        num_layers, bidirectional = _stack_shape(npz, where)
        layers = [[tuple(_weights_member(npz, key, where)
                         for key in _stack_keys(k, reverse))
                   for reverse in range(1 + bidirectional)]
                  for k in range(num_layers)]
        _check_stack(layers, bidirectional, where)
        return kind, [tuple(d) if bidirectional else d[0] for d in layers]
    stateful = _scalar(npz, "stateful", "b", where)
    if kind == "LSTM" and stateful:
        raise ValueError(f"{where}: 'stateful' is True for kind 'LSTM'")
    reverse = _scalar(npz, "reverse", "b", where) if "reverse" in keys else False
    weights = [_weights_member(npz, key, where) for key in ("Wx", "Wh", "b")]
    _check_weights(*weights, where)
    return kind, (stateful, reverse, weights)


def load(path):
    """Read what :func:`save` wrote; return a new layer or stack of its kind.

    Parameters
    ----------
    path : str, os.PathLike or binary file object

    Returns
    -------
    lstmc.LSTM, lstmc.TimeLSTM or lstmc.StackedLSTM
        Built on the stored weights (their dtype kept), with the stored
        ``stateful`` flag (layers) or layers and directions (stacks), no held
        state and zero gradients.

    Raises
    ------
    ValueError
        If the file is not an lstmc weights file: not a zip/npz archive,
        truncated or corrupt, missing or unexpected keys, wrong dtypes,
        ndims or inconsistent shapes (within a layer, or between the layers
        and directions of a stack).  The message says what is wrong.
    FileNotFoundError, PermissionError
        As ``open`` raises them.
    """
    where = _describe(path)
    if hasattr(path, "read"):
        kind, content = _load_file(path, where)
    else:
        with open(os.fspath(path), "rb") as fh:
            kind, content = _load_file(fh, where)
    import lstmc

    if kind == "StackedLSTM":
        try:
            return lstmc.StackedLSTM(content)
        except (TypeError, ValueError) as exc:   # what _check_stack did not see
            raise ValueError(f"{where}: {exc}") from None
    stateful, reverse, (Wx, Wh, b) = content
    if kind == "TimeLSTM":
        return lstmc.TimeLSTM(Wx, Wh, b, stateful=stateful, reverse=reverse)
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
