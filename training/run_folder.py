"""The run folder: what a training run writes, atomically, and whether it may write there.

    RUN/config.json, config.yaml   resolved options + the model's own config (ViTConfig)
    RUN/dataset.json               dataset facts and splits (see keras_vit.datasets)
    RUN/model.keras                the run's model: the epoch chosen on validation, with the
                                   weights validation measured (their EMA when EMA is on)
    RUN/history.csv                one row per epoch (CSVLogger)
    RUN/tensorboard/               TensorBoard logs
    RUN/curves.png                 loss and accuracy curves
    RUN/metrics.json               names model.keras; its test accuracy and loss, how it was
                                   chosen (written last: marks a finished run)
    RUN/backup/                    BackupAndRestore state while a run is unfinished
"""

import csv
import json
import os
import pathlib
import shutil
import tempfile

from keras_vit import run_files

BACKUP_DIR = "backup"


def write_text_atomic(path, text):
    """Writes `text` to `path` through a temporary file in the same folder, then renames."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, values):
    write_text_atomic(path, json.dumps(values, indent=2, sort_keys=False) + "\n")


def save_model_atomic(model, path):
    """`model.save(path)` through a temporary `.keras` file in the same folder."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def prepare(run_dir, config_dict, overwrite=False):
    """Checks that `run_dir` may hold this run; returns "new" or "resume".

    - missing or empty folder: "new";
    - a finished run (metrics.json): error unless `overwrite` (then it is emptied);
    - an unfinished run (config.json, no metrics.json): "resume" when its options match,
      else an error unless `overwrite`;
    - any other non-empty folder: error (it is not a run folder; nothing is deleted).
    """
    run_dir = pathlib.Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"Run folder {str(run_dir)!r} exists and is not a folder.")
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    is_run = (run_dir / "config.json").is_file()
    if not is_run:
        raise ValueError(
            f"{str(run_dir)!r} is not empty and is not a keras-vit run folder; choose another --out."
        )
    if overwrite:
        shutil.rmtree(run_dir)
        return "new"
    if (run_dir / run_files.METRICS_FILE).is_file():
        raise ValueError(
            f"{str(run_dir)!r} already holds a finished run ({run_files.METRICS_FILE} exists). "
            "Pass --overwrite to replace it, or choose another --out."
        )
    saved = json.loads((run_dir / "config.json").read_text())
    saved_options, new_options = saved.get("options", {}), config_dict.get("options", {})
    free = set(config_dict.get("resume_free", ()))
    different = sorted(k for k in set(saved_options) | set(new_options)
                       if k not in free and saved_options.get(k) != new_options.get(k))
    if different:
        raise ValueError(
            f"{str(run_dir)!r} holds an unfinished run with different options ({', '.join(different)}). "
            "Re-run with the same options to resume it, or pass --overwrite to start again."
        )
    return "resume"


def read_history(run_dir):
    """history.csv as {column: [floats]} ({} when there is none)."""
    path = pathlib.Path(run_dir) / "history.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                continue
    return columns


def plot_curves(history, path):
    """Loss and accuracy per epoch (train and validation) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(e) + 1 for e in history.get("epoch", range(len(history.get("loss", []))))]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if len(history.get(prefix + key, [])) == len(epochs):
                ax.plot(epochs, history[prefix + key], style, label=("validation " if prefix else "train ") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = pathlib.Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)
