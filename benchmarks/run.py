"""keras_vit against keras-hub, timm and the machine's matmul limit, in one run on one machine.

    python benchmarks/run.py            # full run: ViT-Ti/16 and ViT-B/16, batch 1 and 8, training
    python benchmarks/run.py --quick    # a few minutes: ViT-Ti/16 batch 1, float32 training only

Peers are timed interleaved (round-robin, several rounds) so that machine noise hits all of
them alike; every figure is a median with its interquartile range, and each is given as a
ratio to keras-hub measured in the same run. timm (PyTorch), the issue's reference for
training speed, joins the float32 training step where torch and timm are installed
(`timm_peer.py`, its own process, alive for the training table only). keras_vit's exports
are converted once per model size, in a child process (tf2onnx's memory, see `write_exports`).
The float32 training step of each Keras peer is also profiled op by op (`profile_step.py`).
Prints the tables and writes the "performance" section of docs/benchmarks.md.
"""

import argparse
import contextlib
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import peers  # noqa: E402
import profile_step  # noqa: E402
import report  # noqa: E402
import tensorflow as tf  # noqa: E402
import timm_peer  # noqa: E402

from keras_vit import console, tensorflow_kernels  # noqa: E402
from keras_vit.training import recipe  # noqa: E402

DEFAULT_PATH = "keras_vit default"  # the training step `keras-vit train` runs unless told
WITHOUT_KERNELS = "keras_vit default, no compiled kernels"  # the same without keras_vit.native_ops
MATMUL_LIMIT = ("fp32 matmul", "-")  # timed among the float32 training rows
# The versions that decide the figures besides TensorFlow's and Keras'.
PEER_PACKAGES = ("keras-hub", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")


def log(message):
    console.log("benchmark", message)


def summarise(rounds):
    """Per-path samples, a list of seconds per round -> median and IQR over all calls (ms)."""
    samples = np.concatenate(rounds) * 1000.0
    q25, median, q75 = np.percentile(samples, [25, 50, 75])
    return {"median_ms": median, "iqr_ms": (q25, q75), "n": len(samples),
            "round_medians_ms": [float(np.median(r)) * 1000.0 for r in rounds]}


def paired_ratio(stats, reference):
    """Time ratio to `reference`, round by round (`report.round_ratios`): (median, (q25, q75))."""
    return report.round_ratios(stats["round_medians_ms"], reference["round_medians_ms"])


def ratio_cells(column, stats, reference):
    """{column: median ratio, "ratio IQR": its spread}, as table cells."""
    median, (q25, q75) = paired_ratio(stats, reference)
    return {column: f"{median:.2f}", "ratio IQR": f"{q25:.2f}-{q75:.2f}"}


def time_interleaved(functions, rounds, calls_per_round, warmup=2, min_seconds=0.0):
    """{name: fn} -> {name: summary}; each fn must block until its result exists.

    At least `rounds` rounds, and more until `min_seconds` have passed: fast paths get more
    rounds, so that a slow spell of the host is a smaller part of their samples.
    """
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in functions}
    started, rounds_done = time.perf_counter(), 0
    while rounds_done < rounds or time.perf_counter() - started < min_seconds:
        rounds_done += 1
        for name, fn in functions.items():
            samples[name].append([])
            # One untimed call first: right after a TensorFlow call, TensorFlow's thread pool
            # still spins for a while and takes the cores from the next path's first call
            # (it made onnxruntime and LiteRT at batch 1 look up to 2x slower than alone).
            fn()
            for _ in range(calls_per_round):
                start = time.perf_counter()
                fn()
                samples[name][-1].append(time.perf_counter() - start)
    return {name: summarise(s) for name, s in samples.items()}


def square_matmul(n):
    """The practical fp32 limit's workload: a function running an n x n x n matmul, and its FLOPs."""
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    matmul = tf.function(lambda: tf.linalg.matmul(a, b))
    return (lambda: matmul().numpy()), 2 * n**3


def matmul_gflops(rounds, n):
    """The practical fp32 limit: an n x n x n matmul, GFLOP/s (median)."""
    run_matmul, flops = square_matmul(n)
    stats = time_interleaved({"matmul": run_matmul}, rounds=rounds, calls_per_round=5)["matmul"]
    return flops / (stats["median_ms"] / 1000.0) / 1e9


def peer_of(path):
    """The peer whose model a timed path runs: keras_vit's exports are keras_vit's model."""
    return path.split()[0] if path.startswith(("keras-hub", "timm")) else "keras_vit"


def gflops(flops, stats):
    return f"{flops / (stats['median_ms'] / 1000) / 1e9:.0f}"


def keras_inference_paths(name, model, images):
    """The ways a Keras user runs a model: predict_on_batch, tf.function, tf.function + XLA."""
    plain = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    xla = tf.function(lambda x: model(x, training=False), jit_compile=True, reduce_retracing=True)
    return {
        f"{name} predict_on_batch": lambda: model.predict_on_batch(images),
        f"{name} tf.function": lambda: plain(images).numpy(),
        f"{name} tf.function+XLA": lambda: xla(images).numpy(),
    }


NUM_CALIBRATION_IMAGES = 16  # for the int8 exports of the random-weight models (timing only)


def _write_artifacts(model_path, workdir):
    from keras_vit.export import bench

    model = keras.saving.load_model(model_path)
    shape = (NUM_CALIBRATION_IMAGES, *model.input_shape[1:])
    calibration = np.random.RandomState(2).uniform(-1, 1, shape).astype("float32")
    bench.write_artifacts(model, workdir, calibration)


def write_exports(model, workdir):
    """keras_vit's exports of `model` (ONNX plain, fused and int8; LiteRT float32 and int8)
    into `workdir`, converted in a child process: tf2onnx needs about 13 GB for ViT-B/16 and
    keeps most of it, which this process, holding every peer's models, cannot spare on a
    24 GiB machine."""
    import concurrent.futures
    import multiprocessing

    model_path = os.path.join(workdir, "model.keras")
    model.save(model_path)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as child:
        child.submit(_write_artifacts, model_path, workdir).result()


def export_paths(workdir, model, images):
    """The exports in `workdir` as timed paths: ONNX Runtime (plain and fused) and LiteRT
    (XNNPACK), each checked once against `model`'s logits."""
    from keras_vit.export import bench

    return bench.load_runners(workdir, images, np.asarray(model(images, training=False)))


def timm_paths(timm, compiled, parameters, **model):
    """timm's training steps of the same model, eager (and torch.compile), in the timm process.

    `parameters`: keras_vit's count for the same configuration, which timm's must equal.
    """
    modes = {"timm eager": False, **({"timm torch.compile": True} if compiled else {})}
    for path, compile_model in modes.items():
        log(f"timm: building {path}")
        count = timm.build(path, compiled=compile_model, **model)
        if count != parameters:
            raise RuntimeError(f"timm's model {model} has {count} parameters, keras_vit's {parameters}")
    return {path: timm.caller(path) for path in modes}


def inference_table(sizes, batches, rounds, with_exports, min_seconds=0.0):
    """-> (the inference table's rows, the ONNX fusion table's rows, the quantized table's
    rows; the last two empty without exports)."""
    rows, fusion_rows, quantized_rows = [], [], []
    for size in sizes:
        with tempfile.TemporaryDirectory() as workdir:
            size_rows, size_fusion_rows, size_quantized_rows = inference_rows(
                size, batches, rounds, export_dir=workdir if with_exports else None, min_seconds=min_seconds
            )
        rows += size_rows
        fusion_rows += size_fusion_rows
        quantized_rows += size_quantized_rows
        keras.backend.clear_session()
    return rows, fusion_rows, quantized_rows


def quantized_rows_of(size, batch, results, export_dir):
    """The int8 artifacts (and the float ones they replace) against float32 LiteRT: time ratio
    per round with its IQR, file size and its ratio."""
    from keras_vit.export import bench

    files = bench.artifact_files(export_dir)
    reference = results[bench.LITERT]
    rows = []
    for path in (bench.LITERT, bench.ONNX_FUSED, *bench.INT8_PATHS):
        if path not in results:
            continue
        stats, size_bytes = results[path], files[path].stat().st_size
        rows.append(
            {
                "model": f"ViT-{size}/16",
                "batch": batch,
                "artifact": path.removeprefix("keras_vit "),
                "median ms": f"{stats['median_ms']:.1f}",
                **ratio_cells("vs float32 LiteRT", stats, reference),
                "size MiB": f"{size_bytes / 2**20:.1f}",
                "size vs float32": f"{files[bench.LITERT].stat().st_size / size_bytes:.1f}x smaller",
            }
        )
    return rows


def inference_rows(size, batches, rounds, export_dir, min_seconds=0.0):
    """Table rows of ViT-`size`/16 at each batch, the fused ONNX graph's time against the
    plain one's, and the int8 artifacts against float32 LiteRT, at each batch; `export_dir`:
    where keras_vit's exports are written and run from, or None to leave them out;
    `min_seconds`: the least timing per batch."""
    from keras_vit.export import bench

    models = {name: build(size, 224, 16) for name, build in peers.PEERS.items()}
    if export_dir:
        log(f"ViT-{size}/16: exporting keras_vit's model (child process)")
        write_exports(models["keras_vit"], export_dir)
    rows, fusion_rows, quantized_rows = [], [], []
    for batch in batches:
        images = np.random.RandomState(0).uniform(-1, 1, (batch, 224, 224, 3)).astype("float32")
        functions = {}
        for name, model in models.items():
            functions.update(keras_inference_paths(name, model, images))
        if export_dir:
            functions.update(export_paths(export_dir, models["keras_vit"], images))
        log(f"ViT-{size}/16 batch {batch}: timing {len(functions)} paths")
        results = time_interleaved(functions, rounds=rounds, calls_per_round=3, min_seconds=min_seconds)
        reference = min((results[f"keras-hub {path}"] for path in ("predict_on_batch", "tf.function+XLA")),
                        key=lambda stats: stats["median_ms"])
        for path, stats in results.items():
            rows.append(
                {
                    "model": f"ViT-{size}/16",
                    "batch": batch,
                    "path": path,
                    "median ms": f"{stats['median_ms']:.1f}",
                    "IQR ms": f"{stats['iqr_ms'][0]:.1f}-{stats['iqr_ms'][1]:.1f}",
                    **ratio_cells("vs best keras-hub", stats, reference),
                    "GFLOP/s": gflops(peers.forward_flops(size, 224, 16, peer=peer_of(path)) * batch, stats),
                }
            )
        if export_dir:
            quantized_rows += quantized_rows_of(size, batch, results, export_dir)
            fused, plain = results[bench.ONNX_FUSED], results[bench.ONNX]
            fusion_rows.append(
                {
                    "model": f"ViT-{size}/16",
                    "batch": batch,
                    "plain ms": f"{plain['median_ms']:.1f}",
                    "fused ms": f"{fused['median_ms']:.1f}",
                    **ratio_cells("fused / plain", fused, plain),
                }
            )
    return rows, fusion_rows, quantized_rows


@contextlib.contextmanager
def timm_process(python):
    """The timm peer (`timm_peer.TimmPeer`) for the block, or None, logged with the reason."""
    timm, why_not = timm_peer.start(python) if python else (None, "--no-timm")
    if not timm:
        log(f"timm rows left out ({why_not})")
    try:
        yield timm
    finally:
        if timm:
            timm.close()


def _traced_without_compiled_kernels(jit_compile):
    """`DEFAULT_PATH`'s training step with keras_vit's compiled kernels off: its train
    function is traced here, while they are, and keeps that graph."""
    model, images, labels = peers.training_step("keras_vit", jit_compile=jit_compile, recipe_optimizer=True)
    available = tensorflow_kernels.native_kernels_available
    tensorflow_kernels.native_kernels_available = lambda: False
    try:
        model.train_on_batch(images, labels)
    finally:
        tensorflow_kernels.native_kernels_available = available
    return model, images, labels


def training_table(variants, rounds, matmul_size, timm=None, timm_compiled=True):
    """Train-step time of a ViT-Ti-shaped model at 32x32, patch 4, batch 64, AdamW, and the
    fp32 matmul limit timed alongside the float32 rows (returned, GFLOP/s).

    `variants`: (precision policy, XLA settings) pairs; all XLA settings of a policy are
    timed interleaved in one session, with keras_vit's default path (`DEFAULT_PATH`) in the
    float32 one, and every row's ratio is to keras-hub's best path of that policy. timm, when
    given, joins the float32 session (eager and torch.compile). The float32 session also
    times a `matmul_size`^3 matmul in every round: each float32 row's share of the matmul
    limit is taken round by round, like the ratios, so a slow spell of the host moves both.
    """
    rows, limit = [], None
    step = peers.TRAINING_STEP
    for policy, jits in variants:
        keras.mixed_precision.set_global_policy(policy)
        steps = {(name, jit): peers.training_step(name, jit_compile=jit) for jit in jits for name in peers.PEERS}
        if policy == "float32":  # what `keras-vit train` runs unless told (jit_compile auto)
            default_jit = recipe.jit_compile_for(None)
            steps[(DEFAULT_PATH, default_jit)] = peers.training_step("keras_vit", jit_compile=default_jit, recipe_optimizer=True)
            steps[(WITHOUT_KERNELS, default_jit)] = _traced_without_compiled_kernels(default_jit)
        functions = {key: lambda m=model, x=images, y=labels: m.train_on_batch(x, y) for key, (model, images, labels) in steps.items()}
        if timm and policy == "float32":
            keras_vit_parameters = steps[("keras_vit", jits[0])][0].count_params()
            functions.update({(name, "-"): fn for name, fn in timm_paths(timm, timm_compiled, keras_vit_parameters, **step).items()})
        if policy == "float32":
            functions[MATMUL_LIMIT], matmul_flops = square_matmul(matmul_size)
        log(f"training step, {policy}, XLA in {jits}")
        results = time_interleaved(functions, rounds=rounds, calls_per_round=3)
        matmul = results.pop(MATMUL_LIMIT, None)
        if matmul:
            limit = matmul_flops / (matmul["median_ms"] / 1000) / 1e9
        reference = min((results[("keras-hub", jit)] for jit in jits), key=lambda stats: stats["median_ms"])
        for (name, jit), stats in results.items():
            if name.startswith("timm"):
                timm.drop(name)
            flops = 3 * step["batch"] * peers.forward_flops(  # forward + backward: about 3x the forward pass
                step["size"], step["image_size"], step["patch_size"], step["num_classes"], peer=peer_of(name))
            rows.append(
                {
                    "peer": name,
                    "precision": policy,
                    "XLA": jit,
                    "median ms": f"{stats['median_ms']:.0f}",
                    "IQR ms": f"{stats['iqr_ms'][0]:.0f}-{stats['iqr_ms'][1]:.0f}",
                    **ratio_cells("vs best keras-hub", stats, reference),
                    "GFLOP/s": gflops(flops, stats),
                    **(share_of_limit_cells(flops, stats, matmul_flops, matmul) if matmul else {}),
                }
            )
        del steps, functions
        keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    return rows, limit


def share_of_limit_cells(flops, stats, matmul_flops, matmul):
    """{"of matmul limit": median, "limit IQR": spread}: a path's GFLOP/s over the matmul's,
    round by round (its time ratio to the matmul, inverted, so the quartiles swap)."""
    median, (q25, q75) = paired_ratio(stats, matmul)
    work = flops / matmul_flops
    return {"of matmul limit": f"{work / median:.0%}", "limit IQR": f"{work / q75:.0%}-{work / q25:.0%}"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ViT-Ti/16 batch 1 and float32 training only (minutes)")
    parser.add_argument("--no-exports", action="store_true", help="skip the ONNX Runtime / LiteRT paths")
    parser.add_argument("--doc", default=str(report.DOC), help="markdown file to write the section into")
    parser.add_argument("--timm-python", default=sys.executable,
                        help="Python with torch and timm for the timm rows (default: this one; see timm_peer.py)")
    parser.add_argument("--no-timm", action="store_true", help="leave timm out even where it is installed")
    args = parser.parse_args(argv)

    installed = {name: version for name, version in report.package_versions(PEER_PACKAGES).items() if version}
    facts = {**report.machine_facts(), **installed}
    rounds = 3 if args.quick else 5
    matmul_size = 2048 if args.quick else 4096
    log(f"fp32 matmul throughput ({matmul_size}^3)")
    limit = matmul_gflops(rounds, matmul_size)
    log(f"matmul: {limit:.0f} GFLOP/s")
    sizes, batches = (["Ti"], [1]) if args.quick else (["Ti", "B"], [1, 8])
    inference, fusion, quantized = inference_table(
        sizes, batches, rounds, with_exports=not args.no_exports, min_seconds=0 if args.quick else 60
    )
    variants = [("float32", (False,))] if args.quick else [("float32", (False, True)), ("mixed_bfloat16", (False, True))]
    # timm's process lives for the training table only; torch.compile (a minute or more) in full runs only.
    with timm_process(None if args.no_timm else args.timm_python) as timm:
        with_timm = timm is not None
        if with_timm:
            facts.update({f"timm process: {key}": value for key, value in timm.versions.items()})
        training, training_limit = training_table(
            variants, rounds=3 if args.quick else 8, matmul_size=matmul_size, timm=timm, timm_compiled=not args.quick
        )
    log("training step op by op, each peer in its own process")
    profile = profile_step.table(steps=3 if args.quick else 5)

    inference_columns = ["model", "batch", "path", "median ms", "IQR ms", "vs best keras-hub", "ratio IQR", "GFLOP/s"]
    training_columns = ["peer", "precision", "XLA", "median ms", "IQR ms", "vs best keras-hub", "ratio IQR", "GFLOP/s",
                        "of matmul limit", "limit IQR"]
    quantized_columns = ["model", "batch", "artifact", "median ms", "vs float32 LiteRT", "ratio IQR", "size MiB", "size vs float32"]
    markdown = "\n\n".join(
        [
            "## Performance: keras_vit vs keras-hub" + (" (quick run)" if args.quick else ""),
            "Made by `python benchmarks/run.py" + (" --quick" if args.quick else "") + "`. Peers timed interleaved in one "
            "process; median and interquartile range over all calls. Ratios are to keras-hub's best path "
            "(its `predict_on_batch` or `tf.function`+XLA, whichever has the lower median) in the same run, taken "
            "round by round (each round times every path within seconds) and given as the median and IQR of the "
            "per-round ratios. GFLOP/s counts each path's own work (`peers.forward_flops`): keras_vit's last "
            "block computes the class token alone, 6.9% less than keras-hub and timm compute."
            + (" timm (training step only) runs in a process of its own, driven call by call "
                                   "from this one (`benchmarks/timm_peer.py`), interleaved like the other paths." if with_timm else ""),
            report.facts_markdown({
                **facts,
                f"fp32 matmul ({matmul_size}^3), GFLOP/s, at the start of the run": f"{limit:.0f}",
                f"fp32 matmul ({matmul_size}^3), GFLOP/s, among the float32 training rows": f"{training_limit:.0f}",
            }),
            "### Inference, 224x224, float32",
            report.markdown_table(inference, inference_columns),
            *(
                [
                    "### ONNX: the fused graph against the plain one",
                    "keras_vit's ONNX export with LayerNormalization and onnxruntime's `Attention` and `Gelu` "
                    "(`onnx_export.optimize`) against the graph as tf2onnx writes it, from the rows above; "
                    "below 1: the fused graph is faster.",
                    report.markdown_table(fusion, ["model", "batch", "plain ms", "fused ms", "fused / plain", "ratio IQR"]),
                ]
                if fusion
                else []
            ),
            *(
                [
                    "### Quantized inference: the int8 artifacts against float32 LiteRT",
                    "keras_vit's int8 exports of the same random-weight models (their accuracy on trained models: "
                    "the section below), timed in the rows above; ratios to float32 LiteRT (XNNPACK, 2 threads) round "
                    "by round. LiteRT `dynamic`: int8 weights, activations quantized at run time; `int8`: static int8 "
                    "matmuls, the rest float32; `full_int8`: every op int8; ONNX Runtime int8: dynamic int8 of the fused graph.",
                    report.markdown_table(quantized, quantized_columns),
                ]
                if quantized
                else []
            ),
            "### Training step, ViT-Ti shape at 32x32, patch 4, batch 64, AdamW",
            f"Every row's ratio is to keras-hub's best path of its precision (XLA or not, whichever is faster); "
            f"`{DEFAULT_PATH}` is what `keras-vit train` runs unless told (`jit_compile` auto: "
            f"XLA={recipe.jit_compile_for(None)} on TensorFlow; its optimizer, `recipe.make_optimizer`, with the "
            "other rows' AdamW hyperparameters and without gradient clipping or weight average); "
            f"`{WITHOUT_KERNELS}` is the same step with keras_vit's compiled kernels off "
            "(`keras_vit.native_ops`): LayerNorm and attention as `keras.ops`, the GELU as XLA kernels. "
            f"The fp32 matmul ({matmul_size}^3) ran in every round of the float32 rows, at {training_limit:.0f} GFLOP/s "
            "(median): each float32 row's share of it is taken round by round.",
            report.markdown_table(training, training_columns),
            "### Training step op by op (float32, no XLA)",
            "Made by `benchmarks/profile_step.py`: one step profiled with TensorFlow's profiler, each peer in its own "
            "process with one inter-op thread, so that ops run one at a time and their times add up to the step. "
            "(With the default threads, as in the table above, independent ops overlap and the step is shorter.) "
            "Milliseconds per step, by op type; oneDNN's kernels count as the op they implement.",
            report.markdown_table(profile, profile_step.COLUMNS),
        ]
    )
    print(markdown)
    report.write_section("performance", markdown, doc=args.doc)
    log(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
