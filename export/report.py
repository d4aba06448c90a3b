"""The export report: `export_report.json` and the same rows as a markdown table."""

import json

from keras_vit.export.formats import REPORT_FILE, REPORT_MARKDOWN_FILE

COLUMNS = (
    ("artifact", "artifact"),
    ("quantization", "quantization"),
    ("size", "size"),
    ("max abs diff", "max_abs_diff"),
    ("top-1 agreement", "top1_agreement"),
    ("accuracy", "accuracy"),
    ("latency b1 (ms)", "latency_ms_batch1"),
    ("latency b8 (ms)", "latency_ms_batch8"),
    ("verified", "passed"),
)


def human_size(num_bytes):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024


def _cell(key, row):
    value = row.get(key)
    if value is None:
        return "–"
    if key == "size":
        return human_size(row["size_bytes"])
    if key == "max_abs_diff":
        return f"{value:.1e}"
    if key in ("top1_agreement", "accuracy"):
        return f"{value:.2%}"
    if key.startswith("latency"):
        return f"{value:.2f}"
    if key == "passed":
        return "reference" if row["artifact"] == "keras" else ("yes" if value else "**FAILED**")
    return str(value)


def _op_note(row):
    """" (fused: 25 LayerNormalization, ...; not fused: 1 Softmax)" for the optimised ONNX
    row, " (XNNPACK: 1 partition)" for a TFLite row (with its fixed size for a model of
    dynamic image size), the second verified size of a dynamic one, else ""."""
    details = row.get("details") or {}
    notes = []
    fused = {op: n for op, n in details.get("fused_ops", {}).items() if n}
    if fused:
        unfused = details.get("not_fused") or {}
        left = f"; not fused: {', '.join(f'{n} {op}' for op, n in unfused.items())}" if unfused else ""
        notes.append(f"fused: {', '.join(f'{n} {op}' for op, n in fused.items())}{left}")
    partitions = details.get("xnnpack_partitions")
    if partitions is not None:
        notes.append(f"XNNPACK: {partitions} partition{'s' if partitions != 1 else ''}")
    if details.get("input_size"):
        notes.append(details["input_size"])
    if details.get("second_size"):
        size = details["second_size"]["size"]
        notes.append(f"also verified at {size[0]}x{size[1]}")
    return f" ({'; '.join(notes)})" if notes else ""


def speed_summary(rows):
    """The fastest verified artifact per batch size (the Keras model, the reference, is not
    an artifact), and every quantized artifact slower than the float32 artifact of its own
    runtime (TFLite: tflite_float32; ONNX: the faster of onnx and onnx_optimized), with how
    much slower."""
    verified = [row for row in rows if row["passed"] and row["format"] != "keras" and row.get("latency_ms_batch1") is not None]
    summary = {"fastest": {}, "slower_than_float32": {}}
    for batch in (1, 8):
        key = f"latency_ms_batch{batch}"
        if verified:
            best = min(verified, key=lambda row: row[key])
            summary["fastest"][f"batch{batch}"] = {"artifact": best["artifact"], "latency_ms": best[key]}
    for row in verified:
        if row["quantization"] in ("none", "float16") or row["format"] not in ("tflite", "onnx"):
            continue
        floats = [r for r in verified if r["format"] == row["format"] and r["quantization"] == "none"]
        if not floats:
            continue
        ratios = {f"batch{b}": row[f"latency_ms_batch{b}"] / min(r[f"latency_ms_batch{b}"] for r in floats) for b in (1, 8)}
        slower = {batch: round(ratio, 2) for batch, ratio in ratios.items() if ratio > 1.0}
        if slower:
            summary["slower_than_float32"][row["artifact"]] = slower
    return summary


def _speed_lines(report):
    speed = report.get("speed") or {}
    lines = []
    fastest = speed.get("fastest") or {}
    if fastest:
        lines.append(
            "Fastest verified artifact: "
            + "; ".join(f"batch {key[5:]}: {value['artifact']} ({value['latency_ms']:.2f} ms)" for key, value in fastest.items())
            + "."
        )
    for artifact, slower in (speed.get("slower_than_float32") or {}).items():
        cases = ", ".join(f"{ratio:.2f}x at batch {batch[5:]}" for batch, ratio in slower.items())
        lines.append(f"**{artifact} is slower than its float32 runtime** ({cases}).")
    return lines


def markdown(report):
    """The report as markdown: a context line, the table, failures and TFLite ops."""
    data = report["verification_data"]
    lines = [
        f"Model: `{report['model']}`; verified on {data['description']} ({data['num_images']} images); "
        f"latency: median of {report['latency_repeats']} runs on this machine ({report['machine']}), "
        "Keras (tf.function) measured in the same run.",
        "",
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in report["artifacts"]:
        size_row = {**row, "size": row.get("size_bytes")}
        lines.append("| " + " | ".join(_cell(key, size_row) for _, key in COLUMNS) + " |")
    speed = _speed_lines(report)
    if speed:
        lines.append("")
        lines.extend(speed)
    failed = [row for row in report["artifacts"] if row.get("failures")]
    if failed:
        lines.append("")
        lines.extend(f"- **{row['artifact']}** failed: {'; '.join(row['failures'])}" for row in failed)
    extras = [row for row in report["artifacts"] if row.get("ops")]
    if extras:
        lines.append("")
        lines.append("Ops (TFLite: builtin only, no Flex/custom ops; ONNX: op types, onnxruntime contrib ops as `com.microsoft:Op`):")
        lines.extend(f"- {row['artifact']}: {', '.join(row['ops'])}{_op_note(row)}" for row in extras)
    return "\n".join(lines) + "\n"


def write(report, folder):
    """Writes `export_report.json` and `export_report.md` into `folder`."""
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    (folder / REPORT_MARKDOWN_FILE).write_text(markdown(report))
