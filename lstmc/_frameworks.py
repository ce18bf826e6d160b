"""Whole stacks to and from other frameworks, for lstmc.StackedLSTM.

StackedLSTM's from_torch / to_torch_state_dict / from_onnx / to_onnx /
from_keras (whose docstrings say what each takes and refuses) call these. The
readers return the StackedLSTM constructor's argument: one ``(Wx, Wh, b)``
triple per layer, or a ``(forward, reverse)`` pair of them; the writers read a
StackedLSTM through its public properties. The per-layer weight layouts are
lstmc.convert's. No framework is imported but ``onnx``, inside the ONNX
functions; torch modules and Keras layers are only read.
"""
import os
import re

import numpy as np

from . import convert

__all__ = ["layer_name", "torch_layers", "torch_state_dict", "onnx_layers", "onnx_model",
           "keras_layers"]

_DIRECTIONS = ("forward", "reverse")


def layer_name(k, d, dirs):
    """'layer 1' or 'layer 1 (reverse)': how messages name one TimeLSTM."""
    return f"layer {k}" + (f" ({_DIRECTIONS[d]})" if dirs == 2 else "")


def _rows(model):
    """A StackedLSTM's TimeLSTMs as one tuple per layer."""
    return [row if isinstance(row, tuple) else (row,) for row in model.layers]


# ---------------------------------------------------------------- PyTorch

def torch_layers(module_or_state_dict):
    """The layers of a torch.nn.LSTM or its state_dict (StackedLSTM.from_torch)."""
    obj = module_or_state_dict
    mode = getattr(obj, "mode", "LSTM")
    if mode != "LSTM":
        raise ValueError(f"the module is a {mode} (mode={mode!r}); expected an LSTM")
    proj = getattr(obj, "proj_size", 0)
    if proj:
        raise ValueError(f"the LSTM has proj_size={proj}; lstmc does not model projected "
                         "hidden states (proj_size must be 0)")
    if callable(getattr(obj, "state_dict", None)):
        obj = obj.state_dict()
    state_dict = _torch_lstm_entries(obj)
    num_layers = 0
    while f"weight_ih_l{num_layers}" in state_dict:
        num_layers += 1
    dirs = 2 if "weight_ih_l0_reverse" in state_dict else 1
    layers = []
    for k in range(num_layers):
        try:
            row = tuple(convert.from_torch_state_dict(state_dict, k, reverse=bool(d))
                        for d in range(dirs))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"layer {k}: {exc}") from exc
        layers.append(row if dirs == 2 else row[0])
    stray = sorted(key for key in state_dict
                   if int(re.search(r"_l(\d+)", key).group(1)) >= num_layers)
    if stray:
        raise ValueError(f"state_dict has {stray!r} but no 'weight_ih_l{num_layers}': its "
                         "layers are not numbered 0, 1, ... without gaps")
    return layers


def torch_state_dict(model, bias):
    """A StackedLSTM's weights under torch's keys (StackedLSTM.to_torch_state_dict)."""
    sd = {}
    for k, row in enumerate(_rows(model)):
        for d, layer in enumerate(row):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            w_ih, w_hh, b_ih, b_hh = convert.to_torch(*layer.params)
            sd["weight_ih" + suffix] = w_ih
            sd["weight_hh" + suffix] = w_hh
            if bias:
                sd["bias_ih" + suffix] = b_ih
                sd["bias_hh" + suffix] = b_hh
            elif np.any(layer.params[2]):
                raise ValueError(f"bias=False, but {layer_name(k, d, len(row))} has a "
                                 "nonzero b; a torch LSTM without bias cannot hold it")
    return sd


# ---------------------------------------------------------------- ONNX

def onnx_layers(path_or_model):
    """The layers of an ONNX model's LSTM nodes (StackedLSTM.from_onnx)."""
    import onnx
    from onnx import numpy_helper

    if isinstance(path_or_model, (str, bytes, os.PathLike)):
        model = onnx.load(path_or_model)
    elif isinstance(path_or_model, onnx.ModelProto):
        model = path_or_model
    else:
        raise TypeError("path_or_model must be a path to an .onnx file or an "
                        f"onnx.ModelProto; got {type(path_or_model).__name__}")
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {}               # output name -> node
    lstm_nodes = []
    for node in graph.node:
        for out in node.output:
            producer[out] = node
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = {a.name: a for a in node.attribute}
            if "value" in attr:
                consts[node.output[0]] = numpy_helper.to_array(attr["value"].t)
        elif node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
        elif node.op_type == "LSTM" and node.domain in ("", "ai.onnx"):
            lstm_nodes.append(node)
    if not lstm_nodes:
        raise ValueError("the ONNX model has no LSTM node")
    layers, direction = [], None
    for k, node in enumerate(lstm_nodes):
        name = f"LSTM node {k} ({node.name!r})" if node.name else f"LSTM node {k}"
        node_dir = _check_onnx_node(node, name)
        if direction is None:
            direction = node_dir
        elif node_dir != direction:
            raise ValueError(f"{name} has direction={node_dir!r} but LSTM node 0 has "
                             f"{direction!r}; all layers must be alike")
        if node_dir == "reverse":
            raise ValueError(f"{name} has direction='reverse' alone; lstmc stacks "
                             "'forward' or 'bidirectional' layers")
        if k > 0 and not _reaches(node.input[0], lstm_nodes[k - 1].output[0], producer):
            raise ValueError(f"{name}'s input X does not come from the output Y of "
                             f"LSTM node {k - 1}; the LSTM nodes do not form one stack")
        W, R, B, P = (_onnx_const(node, i, consts, name) for i in (1, 2, 3, 7))
        if P is not None and np.any(P):
            raise ValueError(f"{name} has peepholes (input P), which lstmc does not model")
        dirs = 2 if direction == "bidirectional" else 1
        row = []
        for d in range(dirs):
            try:
                Wx, Wh, b = convert.from_onnx(W, R, B, direction=d)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{name}: {exc}") from exc
            row.append((Wx, Wh, b))
        hidden = _onnx_attrs(node).get("hidden_size")
        if hidden is not None and hidden != row[0][1].shape[0]:
            raise ValueError(f"{name} has hidden_size={hidden} but R gives "
                             f"H={row[0][1].shape[0]}")
        layers.append(tuple(row) if dirs == 2 else row[0])
    return layers


def onnx_model(model, path, dtype, opset):
    """The ONNX model of a StackedLSTM, saved at path unless None (StackedLSTM.to_onnx)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dtype = model.dtype if dtype is None else np.dtype(dtype)
    elems = {np.dtype(np.float32): TensorProto.FLOAT,
             np.dtype(np.float64): TensorProto.DOUBLE}
    if dtype not in elems:
        raise TypeError(f"dtype is {dtype}; expected float32 or float64")
    elem = elems[dtype]
    L, dirs, H = model.num_layers, model.num_directions, model.hidden_size
    direction = "bidirectional" if dirs == 2 else "forward"
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    const("merge_dirs_shape", np.array([0, 0, -1], np.int64))
    nodes.append(helper.make_node("Transpose", ["X"], ["X_tnd"], perm=[1, 0, 2]))
    x, hn, cn = "X_tnd", [], []
    for k, row in enumerate(_rows(model)):
        onnx_w = [convert.to_onnx(*layer.params) for layer in row]
        W, R, B = (np.concatenate(parts).astype(dtype, copy=False)
                   for parts in zip(*onnx_w))
        starts = const(f"l{k}_start", np.array([k * dirs], np.int64))
        ends = const(f"l{k}_end", np.array([(k + 1) * dirs], np.int64))
        axes = const("axis0", np.array([0], np.int64)) if k == 0 else "axis0"
        for s in ("h", "c"):
            nodes.append(helper.make_node("Slice", [f"initial_{s}", starts, ends, axes],
                                          [f"l{k}_{s}0"]))
        nodes.append(helper.make_node(
            "LSTM", [x, const(f"l{k}_W", W), const(f"l{k}_R", R), const(f"l{k}_B", B),
                     "sequence_lens", f"l{k}_h0", f"l{k}_c0"],
            [f"l{k}_Y", f"l{k}_Yh", f"l{k}_Yc"],
            name=f"lstm_l{k}", direction=direction, hidden_size=H))
        # (T, dirs, N, H) -> (T, N, dirs, H) -> (T, N, dirs * H): torch's concat order
        nodes.append(helper.make_node("Transpose", [f"l{k}_Y"], [f"l{k}_Ytn"],
                                      perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"l{k}_Ytn", "merge_dirs_shape"],
                                      [f"l{k}_out"]))
        x = f"l{k}_out"
        hn.append(f"l{k}_Yh")
        cn.append(f"l{k}_Yc")
    nodes.append(helper.make_node("Transpose", [x], ["Y"], perm=[1, 0, 2]))
    # onnxruntime's LSTM gives zeros as the final state of a row of length 0;
    # lstmc (and torch) give its initial state: put it back.
    nodes += [
        helper.make_node("Equal", ["sequence_lens", const("zero", np.array(0, np.int32))],
                         ["empty"]),
        helper.make_node("Reshape", ["empty", const("mask_shape",
                                                    np.array([1, -1, 1], np.int64))],
                         ["empty_rows"]),
    ]
    for s, parts in (("h", hn), ("c", cn)):
        nodes.append(helper.make_node("Concat", parts, [f"Y_{s}_run"], axis=0))
        nodes.append(helper.make_node("Where", ["empty_rows", f"initial_{s}",
                                                f"Y_{s}_run"], [f"Y_{s}"]))

    def io(name, elem_type, shape):
        return helper.make_tensor_value_info(name, elem_type, shape)

    graph = helper.make_graph(
        nodes, "lstmc_StackedLSTM",
        [io("X", elem, ["N", "T", model.input_size]),
         io("sequence_lens", TensorProto.INT32, ["N"]),
         io("initial_h", elem, [L * dirs, "N", H]),
         io("initial_c", elem, [L * dirs, "N", H])],
        [io("Y", elem, ["N", "T", H * dirs]),
         io("Y_h", elem, [L * dirs, "N", H]),
         io("Y_c", elem, [L * dirs, "N", H])],
        initializer=inits)
    model = helper.make_model(graph, producer_name="lstmc",
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)     # readable by older runtimes too
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, path)
    return model


# ---------------------------------------------------------------- Keras

def keras_layers(model_or_layers):
    """The layers of a Keras model's LSTM layers (StackedLSTM.from_keras)."""
    layers = getattr(model_or_layers, "layers", model_or_layers)
    if not isinstance(layers, (list, tuple)):
        layers = [layers]
    entries, names, pending = [], [], None
    for layer in layers:
        kind = type(layer).__name__
        name = f"{kind} layer {getattr(layer, 'name', '?')!r}"
        if kind in ("InputLayer", "Dropout", "Masking", "SpatialDropout1D"):
            continue
        if kind == "LSTM":
            entries.append(_keras_lstm(layer, name, backwards_ok=False))
        elif kind == "Bidirectional":
            merge = getattr(layer, "merge_mode", None)
            if merge != "concat":
                raise ValueError(f"{name} has merge_mode={merge!r}; lstmc's bidirectional "
                                 "layers concatenate (merge_mode='concat')")
            fwd, bwd = layer.forward_layer, layer.backward_layer
            for part in (fwd, bwd):
                if type(part).__name__ != "LSTM":
                    raise ValueError(f"{name} wraps a {type(part).__name__}; only LSTM "
                                     "layers can be converted")
            entries.append((_keras_lstm(fwd, name + " (forward)", backwards_ok=False),
                            _keras_lstm(bwd, name + " (backward)", backwards_ok=True)))
        else:
            if entries:
                pending = pending or name
            continue
        if pending is not None:
            raise ValueError(f"{pending} sits between two LSTM layers; lstmc stacks LSTM "
                             "layers only")
        names.append((name, layer))
    if not entries:
        raise ValueError("no LSTM or Bidirectional(LSTM) layer found")
    for name, layer in names[:-1]:
        inner = getattr(layer, "forward_layer", layer)
        if not getattr(inner, "return_sequences", True):
            raise ValueError(f"{name} has return_sequences=False but another LSTM layer "
                             "follows it")
    return entries

# ---------------------------------------------------------------- helpers

def _torch_lstm_entries(state_dict):
    """The nn.LSTM entries of a state_dict, with a common prefix removed."""
    if not callable(getattr(state_dict, "keys", None)):
        raise TypeError("module_or_state_dict must be a torch.nn.LSTM or a state_dict "
                        f"(a mapping); got {type(state_dict).__name__}")
    pattern = re.compile(r"^(.*?)((?:weight|bias)_(?:ih|hh|hr)_l\d+(?:_reverse)?)$")
    groups = {}
    for key in state_dict.keys():
        m = pattern.match(str(key))
        if m:
            groups.setdefault(m.group(1), {})[m.group(2)] = state_dict[key]
    if not groups:
        raise ValueError("state_dict holds no LSTM weights (keys like 'weight_ih_l0'); its "
                         f"keys are {list(state_dict.keys())!r}")
    if len(groups) > 1:
        raise ValueError("state_dict holds several LSTMs (prefixes "
                         f"{sorted(groups)!r}); pass the sub-dict of one")
    entries = next(iter(groups.values()))
    hr = sorted(k for k in entries if k.startswith("weight_hr"))
    if hr:
        raise ValueError(f"state_dict has {hr[0]!r}: the LSTM was built with proj_size > 0, "
                         "which lstmc does not model (proj_size must be 0)")
    return entries


def _onnx_attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _check_onnx_node(node, name):
    """The node's direction, after refusing what lstmc does not model."""
    attrs = _onnx_attrs(node)
    text = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    direction = text.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"{name} has direction={direction!r}")
    if "clip" in attrs:
        raise ValueError(f"{name} has clip={attrs['clip']}; lstmc does not clip the cell input")
    if attrs.get("input_forget", 0):
        raise ValueError(f"{name} has input_forget={attrs['input_forget']}; lstmc does not "
                         "couple the input and forget gates")
    if attrs.get("layout", 0):
        raise ValueError(f"{name} has layout={attrs['layout']}; lstmc reads layout=0 "
                         "(X as (T, N, D)) nodes only")
    if "activations" in attrs:
        acts = [a.decode() if isinstance(a, bytes) else a for a in attrs["activations"]]
        default = ["sigmoid", "tanh", "tanh"] * (2 if direction == "bidirectional" else 1)
        if [a.lower() for a in acts] != default:
            raise ValueError(f"{name} has activations={acts}; lstmc computes only the "
                             "default (Sigmoid, Tanh, Tanh)")
    return direction


def _onnx_const(node, index, consts, name):
    """Input `index` of an LSTM node as an array (None when absent)."""
    if index >= len(node.input) or not node.input[index]:
        return None
    what = {1: "W", 2: "R", 3: "B", 7: "P"}[index]
    source = node.input[index]
    if source not in consts:
        raise ValueError(f"{name}'s input {what} ({source!r}) is not a constant of the model "
                         "(an initializer or a Constant node); lstmc needs fixed weights")
    return consts[source]


def _reaches(start, target, producer):
    """Whether the value `start` is computed (through any nodes) from `target`."""
    seen, todo = set(), [start]
    while todo:
        value = todo.pop()
        if value == target:
            return True
        node = producer.get(value)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        todo.extend(i for i in node.input if i)
    return False


def _keras_lstm(layer, name, backwards_ok):
    """(Wx, Wh, b) of a Keras LSTM layer, after checking it computes lstmc's LSTM."""
    config = layer.get_config()
    for key, want in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
        got = config.get(key, want)
        got = got if isinstance(got, str) else getattr(got, "__name__", got)
        if got != want:
            raise ValueError(f"{name} has {key}={got!r}; lstmc computes only the default "
                             f"{key}={want!r}")
    if config.get("go_backwards", False) and not backwards_ok:
        raise ValueError(f"{name} has go_backwards=True; wrap it in Bidirectional instead")
    weights = layer.get_weights()
    try:
        return convert.from_keras(*weights)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: {exc}") from exc
