"""Transformer fusions for the tf2onnx graph of a keras_vit model (used by `onnx_export.optimize`).

Why a rewrite of our own: onnxruntime's transformer optimizer
(`onnxruntime.transformers.optimizer.optimize_model`, model types "vit" and "bert") and its
built-in graph optimizer (every level) fuse nothing in this graph (onnxruntime 1.32: 0 fused
operators): tf2onnx writes Keras' LayerNorm mean as `GlobalAveragePool`, not the
`ReduceMean` ORT's matchers look for, so the LayerNorm, and with it the attention and
skip-LayerNorm matchers that start from a LayerNorm, never match.

Each fusion below replaces one subgraph, exactly as tf2onnx writes the keras_vit layer
(operands of Add and Mul in either order), by one op that onnxruntime's CPU provider runs:

LayerNormalization (keras_vit's `LayerNorm`; x [B, T, D], statistics over D):
    mean = GlobalAveragePool(x)                  # on a rank-3 tensor: the mean over D
    c    = Sub(x, mean)
    var  = GlobalAveragePool(Mul(c, c))
    y    = Add(Mul(c, Mul(Reciprocal(Sqrt(Add(var, eps))), gamma)), beta)
           # `Mul(., gamma)` absent when gamma == 1, `Add(., beta)` when beta == 0
  -> LayerNormalization(x, gamma, beta, axis=-1, epsilon=eps)   (ONNX, opset 17)

Gelu (keras_vit's exact GELU, `0.5 * x * (1 + erf(x / sqrt(2)))`; x [..., F]):
    y = Mul(Mul(x, 0.5), Add(1, Erf(Mul(x, 1 / sqrt(2)))))
  -> com.microsoft Gelu(x)

FastGelu (tanh GELU, `keras.ops.gelu(approximate=True)`):
    y = Mul(Mul(x, 0.5), Add(1, Tanh(Mul(sqrt(2 / pi), Add(x, Mul(0.044715, Pow(x, 3)))))))
  -> com.microsoft FastGelu(x)

QuickGelu (OpenAI CLIP's `x * sigmoid(1.702 x)`):
    y = Mul(x, Sigmoid(Mul(x, 1.702)))
  -> com.microsoft QuickGelu(x, alpha=1.702)

Attention (keras_vit `MultiHeadSelfAttention` up to the output projection; x [B, T, D],
H heads of size hd = D / H, W [D, 3D] and b [3D] the fused qkv Dense):
    qkv     = Add(MatMul(Reshape(x, [-1, D]), W), b)   # the Add is absent when b == 0
    q, k, v = Squeeze(Split(Transpose(Reshape(qkv, [-1, T, 3, H, hd]), [2, 0, 3, 1, 4]), axis=0))
    probs   = Softmax(MatMul(Mul(q, scale), Transpose(k, [0, 1, 3, 2])))
    context = Reshape(Transpose(MatMul(probs, v), [0, 2, 1, 3]), [-1, D])
  -> Reshape(com.microsoft Attention(x, W, b, num_heads=H, scale=scale), [-1, D])
     (Attention writes the context as [B, T, D]; the layer flattens it for its output Dense)
   The last block of a class-token model attends from the class token alone (its q comes
   from a separate slice of W), and an attention-pooling (MAP) head from one learned query:
   not this pattern, so left as they are; one query each, a small part of the work.

How: every node is tried as the last node of each pattern; on a match, one new node (or a
short chain of them) writing the same output tensor takes its place, and the rest of the
subgraph, no longer read by anything, is dropped by a dead-code pass. A value of a matched subgraph that is
also read elsewhere is thus kept, so a match never changes what the graph computes.
"""

import collections
import copy
import math

import numpy as np

CONTRIB_DOMAIN = "com.microsoft"
FUSED_OP_TYPES = ("Attention", "LayerNormalization", "Gelu", "FastGelu", "QuickGelu")
# Ops the patterns above consume: one left in a fused graph marks a subgraph that did not fuse.
PATTERN_OPS = ("Softmax", "GlobalAveragePool", "Erf", "Tanh", "Sigmoid")
QUICK_GELU_ALPHA = 1.702


class _NoMatch(Exception):
    """The subgraph ending at a node is not the pattern being matched."""


def _need(condition):
    if not condition:
        raise _NoMatch


def _attr(node, name, default=None):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _is_scalar(value, target):
    return value is not None and value.size == 1 and bool(np.isclose(float(value.reshape(())), target, rtol=1e-5, atol=0))


class _Graph:
    """Read-only lookups on the original graph, plus the initializers the fusions add."""

    def __init__(self, proto):
        import onnx
        from onnx import numpy_helper

        self.producers = {output: node for node in proto.graph.node for output in node.output}
        self.consumers = collections.defaultdict(list)
        for node in proto.graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.constants = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
        for node in proto.graph.node:
            if node.op_type == "Constant" and _attr(node, "value") is not None:
                self.constants[node.output[0]] = numpy_helper.to_array(_attr(node, "value"))
        inferred = onnx.shape_inference.infer_shapes(proto)
        values = (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
        self.shapes = {
            value.name: [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]
            for value in values
            if value.type.tensor_type.HasField("shape")
        }
        self.new_initializers = []

    def parent(self, tensor, op_type):
        """The node of type `op_type` that writes `tensor`."""
        node = self.producers.get(tensor)
        _need(node is not None and node.op_type == op_type)
        return node

    def const(self, tensor):
        """The constant value of `tensor` (numpy), or None."""
        return self.constants.get(tensor)

    def const_list(self, tensor):
        """The constant value of `tensor` as a flat list of numbers, or None."""
        value = self.constants.get(tensor)
        return None if value is None else value.reshape(-1).tolist()

    def split_constant(self, node):
        """A binary node with one constant input -> (the other input's name, the constant)."""
        _need(len(node.input) == 2)
        a, b = node.input
        if self.const(b) is not None and self.const(a) is None:
            return a, self.const(b)
        _need(self.const(a) is not None and self.const(b) is None)
        return b, self.const(a)

    def read_by_constant_add(self, tensor):
        """Whether an Add of `tensor` and a constant reads `tensor`."""
        return any(
            node.op_type == "Add" and any(self.const(name) is not None for name in node.input if name != tensor)
            for node in self.consumers[tensor]
        )

    def parents(self, node, first_type, second_type):
        """A binary node whose inputs come from a `first_type` and a `second_type` node (either
        order) -> (the first node, the second node)."""
        _need(len(node.input) == 2)
        for a, b in (node.input, node.input[::-1]):
            p, q = self.producers.get(a), self.producers.get(b)
            if p is not None and q is not None and p.op_type == first_type and q.op_type == second_type:
                return p, q
        raise _NoMatch

    def add_initializer(self, name, array):
        from onnx import numpy_helper

        array = np.asarray(array)
        array = array if array.dtype == np.int64 else array.astype(np.float32)
        self.new_initializers.append(numpy_helper.from_array(array, name))
        self.constants[name] = array
        return name


def _new_node(op_type, inputs, anchor, domain="", **attributes):
    """The fused node: writes `anchor`'s output, named after it."""
    from onnx import helper

    return helper.make_node(op_type, inputs, [anchor.output[0]], name=f"{anchor.name}/fused_{op_type}", domain=domain, **attributes)


# ----------------------------------------------------------------------------- fusions


def _layer_norm(g, node):
    """`node` = Add(scaled, beta), or `scaled` itself when beta was folded away, with
    scaled = Mul(c, inv), c = Sub(x, mean)."""
    beta = None
    if node.op_type == "Add":
        scaled_name, beta = g.split_constant(node)
        scaled = g.parent(scaled_name, "Mul")
    else:
        # A Mul followed by its beta's Add is matched there, as one LayerNorm.
        _need(node.op_type == "Mul" and not g.read_by_constant_add(node.output[0]))
        scaled = node
    _need(len(scaled.input) == 2)
    for centred_name, inv_name in (scaled.input, scaled.input[::-1]):  # noqa: B007 (used after the loop)
        centred = g.producers.get(centred_name)
        if centred is not None and centred.op_type == "Sub":
            break
    else:
        raise _NoMatch
    x, mean_name = centred.input
    _mean_over_last_axis(g, mean_name, x)
    variance_plus_epsilon, gamma = _inv_parts(g, inv_name)
    # inv = 1 / sqrt(var + eps), var = mean of Sub(x, mean)^2 over the last axis.
    variance_name, epsilon = g.split_constant(variance_plus_epsilon)
    squared = g.parent(_mean_over_last_axis(g, variance_name, None).input[0], "Mul")
    _need(squared.input[0] == squared.input[1] and list(g.parent(squared.input[0], "Sub").input) == [x, mean_name])
    _need(epsilon.size == 1)

    dim = (g.shapes.get(x) or [None])[-1]
    _need(dim is not None)
    gamma = np.ones(dim, np.float32) if gamma is None else gamma
    beta = np.zeros(dim, np.float32) if beta is None else beta
    _need(gamma.size == gamma.shape[-1] == dim and beta.size == beta.shape[-1] == dim)
    gamma_name = g.add_initializer(f"{node.name}/fused_gamma", gamma.reshape(dim))
    beta_name = g.add_initializer(f"{node.name}/fused_beta", beta.reshape(dim))
    return _new_node("LayerNormalization", [x, gamma_name, beta_name], node, axis=-1, epsilon=float(epsilon.reshape(())))


def _inv_parts(g, inv_name):
    """inv = [Mul(]Reciprocal(Sqrt(Add(var, eps)))[, gamma)] -> (the Add node, gamma or None)."""
    node = g.producers.get(inv_name)
    _need(node is not None)
    gamma = None
    if node.op_type == "Mul":
        inv_name, gamma = g.split_constant(node)
    sqrt = g.parent(g.parent(inv_name, "Reciprocal").input[0], "Sqrt")
    return g.parent(sqrt.input[0], "Add"), gamma


def _mean_over_last_axis(g, tensor, x):
    """The node writing `tensor` if it is the mean of its input over the last axis, keepdims
    (GlobalAveragePool of a rank-3 tensor, or ReduceMean over the last axis); its input must be
    `x` unless `x` is None."""
    node = g.producers.get(tensor)
    _need(node is not None and (x is None or node.input[0] == x))
    rank = len(g.shapes.get(node.input[0], []))
    if node.op_type == "GlobalAveragePool":
        _need(rank == 3)
    else:
        _need(node.op_type == "ReduceMean" and _attr(node, "keepdims", 1) == 1)
        axes = _attr(node, "axes") or (g.const_list(node.input[1]) if len(node.input) > 1 else None)
        _need(rank >= 1 and axes is not None and [a % rank for a in axes] == [rank - 1])
    return node


def _gelu(g, node):
    _need(node.op_type == "Mul")
    half_x, one_plus = g.parents(node, "Mul", "Add")
    x, half = g.split_constant(half_x)
    inner, one = g.split_constant(one_plus)
    _need(_is_scalar(half, 0.5) and _is_scalar(one, 1.0))
    function = g.producers.get(inner)
    _need(function is not None)
    if function.op_type == "Erf":  # Erf(Mul(x, 1/sqrt(2)))
        scaled = g.parent(function.input[0], "Mul")
        scaled_x, factor = g.split_constant(scaled)
        _need(scaled_x == x and _is_scalar(factor, 1 / math.sqrt(2)))
        return _new_node("Gelu", [x], node, domain=CONTRIB_DOMAIN)
    _need(function.op_type == "Tanh")  # Tanh(Mul(sqrt(2/pi), Add(x, Mul(0.044715, Pow(x, 3)))))
    sum_name, factor = g.split_constant(g.parent(function.input[0], "Mul"))
    _need(_is_scalar(factor, math.sqrt(2 / math.pi)))
    total = g.parent(sum_name, "Add")
    _need(x in total.input)
    cubed_name, coefficient = g.split_constant(g.parent(total.input[1] if total.input[0] == x else total.input[0], "Mul"))
    base, exponent = g.split_constant(g.parent(cubed_name, "Pow"))
    _need(base == x and _is_scalar(exponent, 3.0) and _is_scalar(coefficient, 0.044715))
    return _new_node("FastGelu", [x], node, domain=CONTRIB_DOMAIN)


def _quick_gelu(g, node):
    _need(node.op_type == "Mul" and len(node.input) == 2)
    for x, gate in (node.input, node.input[::-1]):  # noqa: B007 (used after the loop)
        sigmoid = g.producers.get(gate)
        if sigmoid is not None and sigmoid.op_type == "Sigmoid":
            break
    else:
        raise _NoMatch
    scaled_x, alpha = g.split_constant(g.parent(sigmoid.input[0], "Mul"))
    _need(scaled_x == x and _is_scalar(alpha, QUICK_GELU_ALPHA))
    return _new_node("QuickGelu", [x], node, domain=CONTRIB_DOMAIN, alpha=QUICK_GELU_ALPHA)


def _attention(g, node):
    from onnx import helper

    _need(node.op_type == "Reshape")
    out_shape = g.const(node.input[1])
    _need(out_shape is not None and out_shape.shape == (2,))
    merge_heads = g.parent(node.input[0], "Transpose")
    _need(list(_attr(merge_heads, "perm", [])) == [0, 2, 1, 3])
    context = g.parent(merge_heads.input[0], "MatMul")
    probs = g.parent(context.input[0], "Softmax")
    _need(_attr(probs, "axis", -1) in (-1, 3))
    scores = g.parent(probs.input[0], "MatMul")
    query_name, scale = g.split_constant(g.parent(scores.input[0], "Mul"))
    _need(scale.size == 1)
    key_t = g.parent(scores.input[1], "Transpose")
    _need(list(_attr(key_t, "perm", [])) == [0, 1, 3, 2])
    squeezes = [g.parent(name, "Squeeze") for name in (query_name, key_t.input[0], context.input[1])]
    split = g.parent(squeezes[0].input[0], "Split")
    _need(_attr(split, "axis", 0) == 0 and [s.input[0] for s in squeezes] == list(split.output))
    _need(all(len(s.input) == 2 and g.const_list(s.input[1]) == [0] for s in squeezes))
    _need(len(split.input) == 1 or g.const_list(split.input[1]) == [1, 1, 1])
    heads_first = g.parent(split.input[0], "Transpose")
    _need(list(_attr(heads_first, "perm", [])) == [2, 0, 3, 1, 4])
    split_heads = g.parent(heads_first.input[0], "Reshape")
    shape5 = g.const(split_heads.input[1])
    _need(shape5 is not None and shape5.shape == (5,) and shape5[2] == 3)
    tokens, num_heads, head_dim = (int(v) for v in shape5[[1, 3, 4]])
    dim = num_heads * head_dim
    _need(list(out_shape[1:]) == [dim])

    # The qkv Dense: MatMul(Reshape(x, [-1, D]), W), then the bias Add (absent when the bias
    # is zero).
    qkv_name, bias = split_heads.input[0], None
    if g.producers.get(qkv_name) is not None and g.producers[qkv_name].op_type == "Add":
        qkv_name, bias = g.split_constant(g.producers[qkv_name])
    projection = g.parent(qkv_name, "MatMul")
    weight_name = projection.input[1]
    weight = g.const(weight_name)
    _need(weight is not None and weight.shape == (dim, 3 * dim))
    flatten = g.parent(projection.input[0], "Reshape")
    _need(g.const_list(flatten.input[1]) == [-1, dim])
    x = flatten.input[0]
    _need(g.shapes.get(x, [])[1:] == [tokens, dim])
    _need(bias is None or bias.size == bias.shape[-1] == 3 * dim)
    bias = np.zeros(3 * dim, np.float32) if bias is None else bias.reshape(3 * dim)
    bias_name = g.add_initializer(f"{node.name}/fused_qkv_bias", bias)
    attention = _new_node(
        "Attention", [x, weight_name, bias_name], node, domain=CONTRIB_DOMAIN, num_heads=num_heads, scale=float(scale.reshape(()))
    )
    attention.output[0] = f"{node.name}/fused_attention_output"
    flatten_name = g.add_initializer(f"{node.name}/fused_flatten_shape", np.asarray([-1, dim], np.int64))
    return [attention, helper.make_node("Reshape", [attention.output[0], flatten_name], [node.output[0]], name=f"{node.name}/fused_flatten")]


MATCHERS = (_attention, _layer_norm, _gelu, _quick_gelu)


# ----------------------------------------------------------------------------- driver


def fuse(proto):
    """Applies every fusion to a copy of `proto` (an `onnx.ModelProto` from tf2onnx).

    Returns (the fused `onnx.ModelProto`, {fused op type: number of nodes}, every type of
    `FUSED_OP_TYPES` listed, 0 when nothing matched). The input model is not modified.
    """
    from onnx import helper

    proto = copy.deepcopy(proto)
    g = _Graph(proto)
    nodes, counts = [], collections.Counter({op_type: 0 for op_type in FUSED_OP_TYPES})
    for node in proto.graph.node:
        fused = None
        for matcher in MATCHERS:
            try:
                fused = matcher(g, node)
                break
            except _NoMatch:
                continue
        if fused is None:
            nodes.append(node)
            continue
        fused = fused if isinstance(fused, list) else [fused]
        nodes.extend(fused)
        counts[fused[0].op_type] += 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    proto.graph.initializer.extend(g.new_initializers)
    if any(node.domain == CONTRIB_DOMAIN for node in nodes) and not any(o.domain == CONTRIB_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    _remove_dead_code(proto.graph)
    return proto, dict(counts)


def unfused_ops(proto):
    """{op type: count} of the `PATTERN_OPS` left in a graph: the subgraphs that did not fuse
    (e.g. the Softmax of a one-query attention)."""
    counts = collections.Counter(node.op_type for node in proto.graph.node if node.op_type in PATTERN_OPS)
    return dict(sorted(counts.items()))


def _remove_dead_code(graph):
    """Drops the nodes, initializers and value_info that no graph output depends on."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(output in needed for output in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    value_info = [value for value in graph.value_info if value.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
