"""`train(config)`: data -> model -> `model.fit` with callbacks -> a finished run folder.

The stages, each a function below and one log line:
1. `_set_up`: seed, precision, strategy;
2. `datasets.resolve_dataset`: the dataset's facts and its train / validation / test splits;
3. `run_folder.prepare`: a new run, the resumption of an unfinished one, or a refusal;
4. `_build_model`: the model (from a checkpoint with `weights`), compiled;
5. `load_data`: the tf.data pipelines, with the model's preprocessing;
6. `_write_run_facts`: config.json (the options and the model's own config), dataset.json;
7. `_fit`: `model.fit`; `model.keras` is saved whenever validation accuracy improves;
8. `_finish`: `model.keras` evaluated once on the test split, curves, metrics.json.

The run folder stands for one model, `model.keras`: the epoch chosen on validation (the
last one without validation), holding the weights that validation measured (the weights'
moving average when EMA is on). Under a multi-worker strategy every worker trains; only
the chief writes the run folder.
"""

import json
import math
import pathlib
import tempfile
import time

import keras

import keras_vit
from keras_vit import console, datasets, native_ops, run_files
from keras_vit.training import data as data_lib
from keras_vit.training import recipe, run_folder
from keras_vit.training.config import TrainConfig

MODEL_FILE = run_files.MODEL_FILE
# What chooses the run's epoch and stops early: the validation loss. Accuracy on a validation
# set of a few hundred images moves in steps of one image and ties for many epochs (the
# first of them would win); the loss keeps ranking them.
MONITOR = "val_loss"


def log(message):
    console.log("train", message)


def augmentation_from(config):
    return data_lib.Augmentation(
        random_crop=config.random_crop,
        crop_scale=(config.crop_scale_min, 1.0),
        flip=config.flip,
        randaugment=config.randaugment,
        mixup=config.mixup,
        cutmix=config.cutmix,
    )


def build_model(config, class_names):
    """The model to train: [B, H, W, 3] normalised images -> [B, len(class_names)] float32
    logits, carrying the class names as its labels. Bad model options raise ValueError."""
    kwargs = dict(config.model_options, image_size=config.image_size, num_classes=len(class_names), labels=class_names)
    if config.weights:
        kwargs["weights"] = config.weights  # num_classes differs: the head is re-created
    try:
        if config.model == "ViT":
            return keras_vit.VisionTransformer(name="vit", **kwargs)
        return keras_vit.create_model(config.model, **kwargs)
    except TypeError as error:
        raise ValueError(f"Bad model_options {config.model_options!r}: {error}") from error


class Throughput(keras.callbacks.Callback):
    """Records each epoch's wall time; images/s excludes the first epoch (tracing, XLA)."""

    def __init__(self, images_per_epoch):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.epoch_seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._start)

    def images_per_second(self):
        steady = self.epoch_seconds[1:] or self.epoch_seconds
        return self.images_per_epoch * len(steady) / sum(steady) if steady else None


def lowest_epoch(losses):
    """The index of the lowest of `losses` (the first on a tie); a NaN loss (a diverged epoch)
    is never the lowest, unless every one is NaN (then the first)."""
    finite = [(loss, index) for index, loss in enumerate(losses) if not math.isnan(loss)]
    return min(finite)[1] if finite else 0


class SaveChosenModel(keras.callbacks.Callback):
    """Saves the run's model to `path` at the end of each epoch whose `monitor` (a loss: lower
    is better) beats every earlier epoch's (`best`, from an interrupted run, included), or
    of every epoch when `monitor` is None (no validation: the last epoch is the run's model).
    A NaN loss beats nothing, and nothing but a NaN loses to it (see `lowest_epoch`).

    With an optimizer that keeps a moving average of the weights (`use_ema`), the average is
    swapped in while saving, so the file holds the weights that validation measured (see
    `keras.callbacks.SwapEMAWeights`, which swaps them in for each validation run).
    """

    def __init__(self, path, monitor=MONITOR, best=None, ema=False):
        super().__init__()
        self.path, self.monitor, self.best, self.ema = path, monitor, best, ema

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is not None:
            value = (logs or {}).get(self.monitor)
            if value is None or (self.best is not None and (math.isnan(value) or value >= self.best)):
                return
            self.best = value
        if not self.ema:
            run_folder.save_model_atomic(self.model, self.path)
            return
        swap = keras.callbacks.SwapEMAWeights()
        swap.set_model(self.model)
        swap.on_test_begin()  # the average in the model, the raw weights in its slots
        try:
            run_folder.save_model_atomic(self.model, self.path)
        finally:
            swap.on_test_end()


def _best_so_far(run_dir):
    """The best (lowest) validation loss of an interrupted run, so that a resumed run does
    not replace model.keras with a worse model."""
    history = run_folder.read_history(run_dir)
    return history[MONITOR][lowest_epoch(history[MONITOR])] if history.get(MONITOR) else None


def make_callbacks(config, run_dir, chief, resume, validated, throughput, user_callbacks=()):
    """The file writers (chief only), then BackupAndRestore on every worker (the chief's in
    RUN/backup). BackupAndRestore comes last so that when it records epoch e as done, e's
    history row and model.keras are already on disk; a kill between the two leaves rows that
    `_trim_history` drops on resume."""
    callbacks = [keras.callbacks.TerminateOnNaN(), throughput]
    if config.ema_momentum:
        callbacks.append(keras.callbacks.SwapEMAWeights())  # validate the average
    if chief:
        callbacks += [
            SaveChosenModel(
                run_dir / MODEL_FILE,
                monitor=MONITOR if validated else None,
                best=_best_so_far(run_dir) if resume else None,
                ema=bool(config.ema_momentum),
            ),
            keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume),
            keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False),
        ]
    if config.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor=MONITOR, mode="min", patience=config.early_stopping)
        )
    backup = run_dir / run_folder.BACKUP_DIR if chief else pathlib.Path(tempfile.mkdtemp(prefix="keras-vit-backup-"))
    return callbacks + list(user_callbacks) + [keras.callbacks.BackupAndRestore(str(backup))]


def _trim_history(run_dir):
    """Drops history rows of epochs that the backup does not hold (killed between writes)."""
    meta = run_dir / run_folder.BACKUP_DIR / "training_metadata.json"
    history = run_dir / "history.csv"
    if not (meta.is_file() and history.is_file()):
        return
    done = json.loads(meta.read_text())["epoch"]
    lines = history.read_text().splitlines(keepends=True)
    header, rows = lines[:1], [r for r in lines[1:] if r.strip() and int(r.split(",", 1)[0]) < done]
    run_folder.write_text_atomic(history, "".join(header + rows))


def evaluate_saved(path, dataset):
    """Re-loads a saved `.keras` model (outside any strategy) and evaluates it: {loss, accuracy}."""
    model = keras.saving.load_model(path)
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    return {k: float(v) for k, v in results.items()}


def train(config, callbacks=()):
    """Trains a ViT as `config` (a `TrainConfig` or a dict of options) says.

    Returns a dict: run_dir, metrics (also in metrics.json on the chief), history, model
    (the model as it ended training; the run's model is `run_dir / "model.keras"`).
    Raises ValueError for bad options, data or run folders before any training starts.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    run_dir = pathlib.Path(config.out)
    strategy, chief = _set_up(config)

    log(f"loading data {config.dataset!r}")
    facts = datasets.resolve_dataset(
        config.dataset, config.data_dir, config.test_fraction, config.validation_fraction,
        config.validate_on_test, config.seed,
    )
    data_lib.check_batch_size(facts, config.batch_size)
    validated = facts["validation"]["source"] != "none"
    if config.early_stopping and not validated:
        raise ValueError("early_stopping needs validation: a validation_fraction > 0 (or a dataset with a validation split).")
    steps = facts["num_train"] // config.batch_size
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch)
    log(f"{facts['num_train']} training / {facts['num_validation']} validation ({facts['validation']['description']}) / "
        f"{facts['num_test']} test images, {facts['num_classes']} classes, {steps} steps of {config.batch_size} per epoch")

    mode = _check_run_folder(config, run_dir, chief)
    with strategy.scope():
        model = _build_model(config, facts, steps)
    data = data_lib.load_data(
        image_size=(config.image_size, config.image_size),
        batch_size=config.batch_size,
        augmentation=augmentation_from(config),
        preprocessing=model.vit_config.preprocessing,
        seed=config.seed,
        cache=config.cache,
        facts=facts,
    )
    if chief:
        _write_run_facts(config, run_dir, model, facts)

    throughput = Throughput(steps * config.batch_size)
    fit_callbacks = make_callbacks(config, run_dir, chief, mode == "resume", validated, throughput, callbacks)
    history, fit_seconds = _fit(config, model, data, steps, fit_callbacks)

    metrics = {"run_dir": str(run_dir)}
    if chief:
        metrics = _finish(config, run_dir, data, strategy, throughput, fit_seconds, mode)
    return {"run_dir": run_dir, "metrics": metrics, "history": history.history, "model": model}


def _set_up(config):
    """Seed, precision policy and strategy; returns (strategy, whether this worker writes files)."""
    keras.utils.set_random_seed(config.seed)
    recipe.set_precision(config.precision)
    strategy = recipe.make_strategy(config.strategy)
    chief = recipe.is_chief(strategy)
    if config.strategy == "multi_worker":
        from keras_vit.training import compat

        compat.patch_keras_for_multi_worker()
    log(f"strategy {config.strategy} ({strategy.num_replicas_in_sync} replica(s)), precision {config.precision}"
        + ("" if chief else ", non-chief worker: writes no files"))
    return strategy, chief


def _check_run_folder(config, run_dir, chief):
    """"new" or "resume" (see `run_folder.prepare`); a refusal raises ValueError."""
    if not chief:
        return "new"
    mode = run_folder.prepare(run_dir, {"options": config.to_dict(), "resume_free": list(TrainConfig.RESUME_FREE)}, config.overwrite)
    if mode == "resume":
        log(f"resuming the unfinished run in {run_dir}")
        _trim_history(run_dir)
    return mode


def _build_model(config, facts, steps):
    """The model, compiled with the run's optimizer, schedule, loss and metrics."""
    model = build_model(config, facts["class_names"])
    c = model.vit_config
    log(f"built {config.model} ({c.num_layers} layers, width {c.hidden_dim}, "
        f"{c.image_size[0]}x{c.image_size[1]} / patch {c.patch_size[0]}, {model.count_params():,} parameters)")
    total_steps = steps * config.epochs
    schedule = recipe.warmup_cosine(
        config.learning_rate,
        total_steps=total_steps,
        warmup_steps=min(int(round(config.warmup_epochs * steps)), total_steps),
        end_learning_rate=config.end_learning_rate,
    )
    optimizer = recipe.make_optimizer(
        model, config.optimizer, schedule, config.weight_decay, config.momentum, config.clipnorm,
        ema_momentum=config.ema_momentum,
    )
    if warning := recipe.ema_too_slow(config.ema_momentum, total_steps):
        log(f"warning: {warning}")
    model.compile(
        optimizer=optimizer,
        loss=recipe.make_loss(config.label_smoothing),
        metrics=["accuracy"],
        jit_compile=recipe.jit_compile_for(config.jit_compile),
    )
    # What Keras made of it ("auto" resolved, or False where the model cannot be compiled).
    log(f"XLA for the whole training step: {model.jit_compile}" + (" (auto)" if config.jit_compile is None else ""))
    log(f"keras_vit's compiled kernels (LayerNorm, attention, bias + GELU): {_native_kernels_used(model)}")
    return model


def _native_kernels_used(model):
    """Whether the training step runs keras_vit's compiled TensorFlow kernels: on TensorFlow,
    without XLA for the whole step, where they can be built (`keras_vit.native_ops`)."""
    return keras.backend.backend() == "tensorflow" and not model.jit_compile and native_ops.load() is not None


def _write_run_facts(config, run_dir, model, facts):
    """config.json / config.yaml (the options and the model's own config) and dataset.json."""
    resolved = {
        "options": config.to_dict(),
        "model_config": model.vit_config.to_dict(),
        "jit_compile_used": model.jit_compile,  # what `jit_compile` (None: auto) became
        "native_kernels_used": _native_kernels_used(model),
        "resume_free": list(TrainConfig.RESUME_FREE),
        "keras_vit_version": keras_vit.__version__,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    run_folder.write_json(run_dir / "config.json", resolved)
    _write_yaml(run_dir / "config.yaml", resolved)
    run_folder.write_json(run_dir / run_files.DATASET_FILE, facts)


def _fit(config, model, data, steps, callbacks):
    log(f"fitting {config.epochs} epochs")
    start = time.perf_counter()
    # A capped epoch reads part of the (finite) training set: repeat it so epochs never run dry.
    train_ds = data.train.repeat() if config.steps_per_epoch else data.train
    history = model.fit(
        train_ds,
        validation_data=data.validation,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch and steps,
        callbacks=callbacks,
        shuffle=False,  # the pipeline shuffles
        verbose=min(config.verbose, 2),
    )
    losses = history.history.get("loss", [])
    if model.stop_training and losses and losses[-1] != losses[-1]:
        raise RuntimeError("Training stopped: the loss became NaN (try a lower --learning-rate).")
    return history, time.perf_counter() - start


def _finish(config, run_dir, data, strategy, throughput, fit_seconds, mode):
    """Evaluates model.keras once on the test split; writes curves.png and metrics.json."""
    facts = data.facts
    log(f"evaluating {MODEL_FILE} on the test split")
    test = evaluate_saved(run_dir / MODEL_FILE, data.test)
    history = run_folder.read_history(run_dir)
    validation = facts["validation"]["source"]
    if validation == "none":
        chosen, chosen_by = len(history.get("loss", [])) - 1, "the last epoch (no validation)"
    else:
        chosen = lowest_epoch(history[MONITOR])
        chosen_by = f"lowest validation loss ({facts['validation']['description']})"
    metrics = {
        "model": MODEL_FILE,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "chosen_epoch": int(history["epoch"][chosen]) + 1 if history.get("epoch") else None,
        "chosen_by": chosen_by,
        "validation_accuracy": history["val_accuracy"][chosen] if validation != "none" else None,
        "validation_loss": history[MONITOR][chosen] if validation != "none" else None,
        "weights": f"exponential moving average (momentum {config.ema_momentum})" if config.ema_momentum else "trained",
        "epochs_run": len(history.get("loss", [])),
        "num_train": facts["num_train"],
        "num_validation": facts["num_validation"],
        "num_test": facts["num_test"],
        "fit_seconds_this_session": fit_seconds,
        "train_images_per_second": throughput.images_per_second(),
        "resumed": mode == "resume",
        "strategy": config.strategy,
        "replicas": strategy.num_replicas_in_sync,
        "precision": config.precision,
    }
    if history:
        run_folder.plot_curves(history, run_dir / "curves.png")
    run_folder.write_json(run_dir / run_files.METRICS_FILE, metrics)
    log(f"test accuracy {test['accuracy']:.4f} ({MODEL_FILE}, epoch {metrics['chosen_epoch']}, chosen by {chosen_by}); "
        f"run folder {run_dir}")
    return metrics


def _write_yaml(path, values):
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is in the train extra
        return
    run_folder.write_text_atomic(path, yaml.safe_dump(values, sort_keys=False))
