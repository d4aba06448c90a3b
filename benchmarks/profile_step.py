"""Where a training step's time goes: one float32 step of each peer, profiled op by op.

    python benchmarks/profile_step.py                  # prints the table for both peers
    python benchmarks/profile_step.py --peer keras_vit # one peer, JSON (what `table` runs)

The step is `benchmarks/run.py`'s: a ViT-Ti-shaped model at 32x32, patch 4, batch 64, AdamW,
no XLA; keras_vit's is its default path (the optimizer `keras-vit train` builds). Each peer
runs in its own process with one inter-op thread, so TensorFlow runs one
op at a time and the op times add up to the step. (With the default threads independent
ops overlap: the step is faster, as in run.py's table, but per-op times then count the
overlap twice.) Op types are grouped; oneDNN's names count as the op they implement
(`_MklNativeFusedMatMul` is a MatMul); keras_vit's own compiled kernels (`native_ops`) are
a group. Ops in the optimizer's name scope form one group whatever their type.
"""

import argparse
import collections
import glob
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

# Op types by group, after `_op_type` strips oneDNN's prefixes; anything else is "other".
GROUPS = {
    "MatMul (2-D)": {"MatMul"},
    "BatchMatMul": {"BatchMatMulV2", "BatchMatMulV3"},
    "Einsum": {"Einsum"},
    "Conv2D (patches)": {"Conv2D", "Conv2DWithBias", "Conv2DBackpropFilter", "Conv2DBackpropFilterWithBias"},
    "Softmax": {"Softmax"},
    "BiasAdd and its gradient": {"BiasAdd", "BiasAddGrad"},
    "layout copies": {"Transpose", "ConjugateTranspose", "Pack", "Unpack", "ConcatV2", "Split", "SplitV",
                      "Slice", "StridedSlice", "StridedSliceGrad", "Tile", "BroadcastTo"},
}
OTHER = "element-wise and reductions (LayerNorm, GELU, residual, loss)"
ASYNC = "XLA-compiled kernels"
NATIVE = "keras_vit's compiled kernels (LayerNorm, attention, bias + GELU)"
NATIVE_PREFIX = "KerasVit"  # the op types of keras_vit/kernels/*.cc
OPTIMIZER = "optimizer update (AdamW)"
OPTIMIZER_NAME = "adamw_update"  # its name scope tells its ops apart from the model's
ROW_ORDER = [*GROUPS, NATIVE, ASYNC, OTHER, OPTIMIZER]

_NODE_EVENT = re.compile(r"^(?P<name>[\w./\-]+):(?P<type>[_A-Z]\w*)$")


def _op_type(name):
    return re.sub(r"^_Mkl(Native)?(Fused)?", "", name)


def _group(node_name, op_type):
    if node_name.split("/")[0] == OPTIMIZER_NAME:
        return OPTIMIZER
    base = _op_type(op_type)
    if base.startswith(NATIVE_PREFIX):
        return NATIVE
    return next((group for group, types in GROUPS.items() if base in types), OTHER)


def profile_peer(peer, steps):
    """{group: ms per step, "ops": ..., "step": ..., "step_unprofiled": ...} for one peer.

    Sets TensorFlow's inter-op threads to 1, so call it in a fresh process.
    """
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import peers

    tf.config.threading.set_inter_op_parallelism_threads(1)
    model, images, labels = peers.training_step(
        peer, jit_compile=False, optimizer_name=OPTIMIZER_NAME, recipe_optimizer=peer == "keras_vit")
    for _ in range(3):
        model.train_on_batch(images, labels)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    unprofiled = (time.perf_counter() - start) / steps

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            model.train_on_batch(images, labels)
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(pathlib.Path(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]).read_bytes())

    ms = collections.Counter()
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            for event in line.events:
                name, duration = names[event.metadata_id].name, event.duration_ps / 1e9
                node = _NODE_EVENT.match(name)
                if node:
                    ms[_group(node["name"], node["type"])] += duration
                elif name == "ExecutorState::ProcessAsync::Start":  # how XLA clusters are launched
                    ms[ASYNC] += duration
                elif name == "ExecutorState::Process":  # the whole train function
                    ms["step"] += duration
    if not ms["step"] or not ms[OPTIMIZER] or not ms[OTHER]:
        raise RuntimeError(f"TensorFlow's profile has no op events this script knows: {dict(ms)}")
    result = {key: value / steps for key, value in ms.items()}
    result["ops"] = sum(result.get(group, 0.0) for group in ROW_ORDER)
    result["step_unprofiled"] = unprofiled * 1000.0
    return result


def table(steps=5):
    """Profiles each peer in a child process; returns the markdown table's rows."""
    import peers

    results = {}
    for peer in peers.PEERS:
        child = subprocess.run(
            [sys.executable, __file__, "--peer", peer, "--steps", str(steps)],
            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        if child.returncode != 0:
            raise RuntimeError(f"profiling {peer} failed:\n{child.stderr[-3000:]}")
        results[peer] = json.loads(child.stdout.strip().splitlines()[-1])
    mine, theirs = results["keras_vit"], results["keras-hub"]
    rows = []
    for label, key in [*((g, g) for g in ROW_ORDER), ("all ops", "ops"),
                       ("train function (profiled)", "step"), ("step, same process, not profiled", "step_unprofiled")]:
        a, b = mine.get(key, 0.0), theirs.get(key, 0.0)
        rows.append({"where": label, "keras_vit ms": f"{a:.1f}", "keras-hub ms": f"{b:.1f}",
                     "difference ms": f"{a - b:+.1f}"})
    return rows


COLUMNS = ["where", "keras_vit ms", "keras-hub ms", "difference ms"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", help="profile this peer only and print JSON")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    if args.peer:
        print(json.dumps(profile_peer(args.peer, args.steps)))
        return 0
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import report

    print(report.markdown_table(table(args.steps), COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
