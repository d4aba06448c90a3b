"""Records the quickstart export report in docs/benchmarks.md (section `export`).

    python benchmarks/export.py [RUN_DIR]      # default runs/quickstart

Uses RUN_DIR/export/export_report.json as `make quickstart` left it; exports the run first
(`keras-vit export RUN_DIR`) when there is no report yet. Train the run first with
`make quickstart`.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from report import facts_markdown, machine_facts, write_section  # noqa: E402

from keras_vit import run_files  # noqa: E402
from keras_vit.export import formats  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    run_dir = pathlib.Path(argv[0] if argv else "runs/quickstart")
    report_path = run_dir / "export" / formats.REPORT_FILE
    if not report_path.exists():
        if not (run_dir / run_files.METRICS_FILE).exists():
            print(f"{run_dir} is not a finished run: run `make quickstart` first.", file=sys.stderr)
            return 2
        from keras_vit.export import cli

        code = cli.main([str(run_dir), "--out", str(run_dir / "export")])
        if code:
            return code
    from keras_vit.export.report import markdown

    report = json.loads(report_path.read_text())
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    model = config.get("model_config") or {}
    model_line = ", ".join(f"{k}={model[k]}" for k in ("image_size", "patch_size", "hidden_dim", "num_layers", "num_heads", "mlp_dim") if k in model)
    text = "\n\n".join(
        [
            "## Export (quickstart digits model)",
            "Made by `make quickstart` (which ends with `keras-vit export RUN_DIR`) and recorded by "
            "`python benchmarks/export.py`. Every artifact is verified against the Keras model on the "
            "digits test split before it is written: float32 max abs logit diff <= 1e-4, float16 <= 1e-2 x max(1, max |logit|), "
            "int8 top-1 agreement >= 98% and accuracy at most 1 point below Keras'. Latency is the median wall time of "
            "one call on this machine, the Keras model (a `tf.function`) timed in the same run; times "
            "of a fraction of a millisecond are noisy, the ratios between artifacts less so. TFLite "
            "runs in the `ai_edge_litert` interpreter (XNNPACK, all cores), ONNX in onnxruntime (CPU).",
            f"Model: {model_line or report['model']}. Exported {report['created']} on {report['machine']}.",
            markdown(report),
            "Machine at the time of recording:\n\n" + facts_markdown(machine_facts()),
        ]
    )
    write_section("export", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
