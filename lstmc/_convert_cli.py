"""``python -m lstmc convert SRC DST``: a trained LSTM from one file format to another.

=======================  ===================================================
SRC                      read as
=======================  ===================================================
``.pt``, ``.pth``        a ``torch.nn.LSTM`` state_dict (``torch.save(lstm.
                         state_dict(), path)``), read with ``torch.load(...,
                         weights_only=True)``; torch is imported only then
``.onnx``                the LSTM nodes of an ONNX model
                         (``StackedLSTM.from_onnx``); needs ``onnx``
``.npz``                 an lstmc weights file (``lstmc.load``)
=======================  ===================================================

DST is ``.npz`` (``lstmc.save`` of the ``StackedLSTM``, in its own dtype) or
``.onnx`` (``StackedLSTM.to_onnx``: inputs X, sequence_lens, initial_h,
initial_c), written in float32 unless ``--onnx-dtype float64``: onnxruntime's
LSTM runs float32 only.
The formats are told apart by the file names' extensions (any case). A
single-layer ``.npz`` (an ``LSTM`` or ``TimeLSTM``) is converted as a
one-layer stack.

A state_dict may come from a larger model that holds the LSTM as a submodule
(``encoder.lstm.weight_ih_l0``, ...): the one prefix in front of the LSTM's
keys is found and dropped, or chosen with ``--prefix`` when there are several.

Exit codes: 0 done (one line on stdout says what was written); 2 a usage
error (unknown extension, SRC missing, DST not writable, a package that the
format needs not installed), one line on stderr; 1 a file that cannot be
converted (not an LSTM, damaged, an LSTM feature lstmc does not model), one
line on stderr. No traceback unless asked for with ``-v``.

DST is written atomically (a complete file next to it, renamed over it), so a
failed conversion leaves an existing DST as it was.
"""
import os
import re
import sys
import warnings

from lstmc._cli import Parser, unwritable
from lstmc._io import write_atomic

PROG = "python -m lstmc convert"

_READ = {".pt": "torch", ".pth": "torch", ".onnx": "onnx", ".npz": "npz"}
_WRITE = {".npz": "npz", ".onnx": "onnx"}
_NEEDS = {"torch": ("torch", "torch"), "onnx": ("onnx", "onnx")}   # format: (module, pip name)


class _Failed(Exception):
    """A conversion that cannot be done: its message and exit code."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def build_parser():
    p = Parser(
        prog=PROG,
        description="Convert a trained LSTM (any layers, one or both directions): a torch "
        "state_dict (.pt, .pth) or an ONNX model (.onnx) to an lstmc weights file (.npz), "
        "and an lstmc weights file to an ONNX model that onnxruntime runs "
        "(inputs X, sequence_lens, initial_h, initial_c).")
    p.add_argument("src", metavar="SRC", help="the file to read: .pt, .pth, .onnx or .npz")
    p.add_argument("dst", metavar="DST", help="the file to write: .npz or .onnx "
                   "(replaced if it exists)")
    p.add_argument("--prefix", metavar="P", help="for a state_dict holding several LSTMs: "
                   "the prefix of the one to convert's keys (e.g. 'encoder.lstm.')")
    p.add_argument("--onnx-dtype", choices=("float32", "float64"), default="float32",
                   help="the dtype of an .onnx DST (default %(default)s, what onnxruntime's "
                   "LSTM runs)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="on a failure, print the traceback instead of one line")
    return p


def _format(path, table, role):
    ext = os.path.splitext(path)[1].lower()
    if ext not in table:
        raise _Failed("%s %r: unknown extension %r; expected one of %s"
                      % (role, path, ext or "(none)", ", ".join(sorted(table))), 2)
    return table[ext]


def _require(fmt, what):
    """Import the module a format needs, or raise a usage error naming the install."""
    name, pip_name = _NEEDS[fmt]
    try:
        return __import__(name)
    except ImportError as exc:
        raise _Failed("%s needs %s, which cannot be imported (%s): pip install %s"
                      % (what, name, _first_line(exc), pip_name), 2)


def _first_line(exc):
    """The first line of an exception's message, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _describe(exc):
    """An exception in one line: lstmc's errors as they are, others with their type."""
    if isinstance(exc, (ValueError, TypeError, OSError)):
        return _first_line(exc)
    return "%s: %s" % (type(exc).__name__, _first_line(exc))


def _lstm_keys(state_dict, prefix):
    """The state_dict for StackedLSTM.from_torch: the keys under ``prefix``
    with the prefix dropped; without one, the whole state_dict (from_torch
    finds the LSTM's one prefix), unless it holds several LSTMs."""
    if prefix is None:
        prefixes = sorted({k[:-len("weight_ih_l0")] for k in state_dict
                           if isinstance(k, str) and k.endswith("weight_ih_l0")})
        if len(prefixes) > 1:
            raise _Failed("holds several LSTMs (key prefixes %s): choose one with --prefix"
                          % ", ".join(repr(p) for p in prefixes), 2)
        return state_dict
    if prefix + "weight_ih_l0" not in state_dict:
        raise _Failed("has no key %r (--prefix %r)" % (prefix + "weight_ih_l0", prefix), 2)
    return {k[len(prefix):]: v for k, v in state_dict.items()
            if isinstance(k, str) and k.startswith(prefix)}


def _read(path, fmt, prefix):
    import lstmc

    if fmt == "npz":
        obj = lstmc.load(path)
        if isinstance(obj, lstmc.StackedLSTM):
            return obj
        if getattr(obj, "reverse", False):
            raise _Failed("holds a TimeLSTM with reverse=True: a reverse direction alone is "
                          "not a model other frameworks run (save the StackedLSTM it "
                          "belongs to)", 1)
        return lstmc.StackedLSTM([tuple(obj.params)])
    if fmt == "onnx":
        return lstmc.StackedLSTM.from_onnx(path)
    import torch

    try:
        with warnings.catch_warnings():   # stderr holds our one line, not torch's notes
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # torch raises many kinds (UnpicklingError, RuntimeError...)
        first = _first_line(exc).split(". ")[0]   # torch's advice on unsafe loading: not ours
        raise _Failed("cannot be read by torch.load(weights_only=True) (%s: %s); save the "
                      "LSTM's state_dict(), not the module: torch.save(lstm.state_dict(), path)"
                      % (type(exc).__name__, first), 1)
    if not isinstance(state, dict):
        raise _Failed("holds a %s, not a state_dict (expected torch.save(lstm.state_dict(), "
                      "path))" % type(state).__name__, 1)
    return lstmc.StackedLSTM.from_torch(_lstm_keys(state, prefix))


def _write(model, path, fmt, onnx_dtype):
    import lstmc

    if fmt == "npz":
        lstmc.save(path, model)            # atomic
        return
    # Atomic as lstmc.save: a complete file next to DST, renamed over it.
    data = model.to_onnx(dtype=onnx_dtype).SerializeToString()
    write_atomic(os.fsdecode(os.fspath(path)), lambda fh: fh.write(data))


def _convert(args):
    src_fmt = _format(args.src, _READ, "SRC")
    dst_fmt = _format(args.dst, _WRITE, "DST")
    if not os.path.exists(args.src):
        raise _Failed("SRC %r: no such file" % args.src, 2)
    if os.path.isdir(args.src):
        raise _Failed("SRC %r: is a directory" % args.src, 2)
    why = unwritable(args.dst)
    if why:
        raise _Failed("DST %r: %s" % (args.dst, why), 2)
    if args.prefix is not None and src_fmt != "torch":
        raise _Failed("--prefix applies to a .pt/.pth SRC only", 2)
    if src_fmt in _NEEDS:        # before any work: a missing package is a usage error
        _require(src_fmt, "reading SRC %r" % args.src)
    if dst_fmt in _NEEDS:
        _require(dst_fmt, "writing DST %r" % args.dst)
    # Past the checks above, whatever the readers and writers raise (lstmc's
    # ValueError, onnx's DecodeError, torch's UnpicklingError, OSError) is a
    # file that cannot be converted: exit 1, one line (-v: the traceback).
    try:
        model = _read(args.src, src_fmt, args.prefix)
    except _Failed as exc:
        raise _Failed("SRC %r %s" % (args.src, exc), exc.code) from None
    except Exception as exc:
        if args.verbose:
            raise
        raise _Failed("SRC %r: %s" % (args.src, _describe(exc)), 1) from None
    try:
        _write(model, args.dst, dst_fmt, args.onnx_dtype)
    except Exception as exc:
        if args.verbose:
            raise
        raise _Failed("cannot write DST %r: %s" % (args.dst, _describe(exc)), 1) from None
    return model


def main(argv=None, prog=PROG):
    """Run ``convert`` with ``argv`` (default: sys.argv[1:]); return the exit code."""
    parser = build_parser()
    parser.prog = prog
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        model = _convert(args)
    except _Failed as exc:
        print("%s: error: %s" % (prog, exc), file=sys.stderr)
        return exc.code
    print("wrote %s: StackedLSTM, %d layer%s, %s, D=%d, H=%d, %s"
          % (args.dst, model.num_layers, "" if model.num_layers == 1 else "s",
             "bidirectional" if model.bidirectional else "one direction",
             model.input_size, model.hidden_size, model.dtype))
    return 0
