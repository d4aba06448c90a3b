"""`train(config)`: data -> model -> `model.fit` with callbacks -> a finished run folder.

Stages (each logs one line): resolve the strategy and precision, load the data, build and
compile the model, check the run folder (new / resume / refuse), fit, save `final.keras`,
evaluate the final and best models on the test split, write curves and `metrics.json`.
Under a multi-worker strategy every worker trains; only the chief writes the run folder.
"""

import json
import pathlib
import sys
import tempfile
import time

import keras

import keras_vit
from keras_vit.config import ViTConfig
from keras_vit.training import data as data_lib
from keras_vit.training import recipe, run_folder
from keras_vit.training.config import TrainConfig


def log(message):
    """One progress line per stage, on stderr (Keras progress bars go to stdout)."""
    print(f"[keras-vit train] {message}", file=sys.stderr, flush=True)


def augmentation_from(config):
    return data_lib.Augmentation(
        random_crop=config.random_crop,
        crop_scale=(config.crop_scale_min, 1.0),
        flip=config.flip,
        randaugment=config.randaugment,
        mixup=config.mixup,
        cutmix=config.cutmix,
    )


def model_config(config, num_classes):
    """The resolved `ViTConfig` of the run's model (checks the options before building)."""
    options = dict(config.model_options, image_size=config.image_size, num_classes=num_classes)
    try:
        if config.model == "ViT":
            return ViTConfig(**options)
        return ViTConfig.from_variant(config.model, **options)
    except TypeError as error:
        raise ValueError(f"Bad model_options {config.model_options!r}: {error}") from error


def build_model(config, num_classes):
    """The model to train: [B, H, W, 3] normalised images -> [B, num_classes] float32 logits."""
    kwargs = dict(config.model_options, image_size=config.image_size, num_classes=num_classes)
    if config.weights:
        kwargs["weights"] = config.weights  # num_classes differs: the head is re-created
    if config.model == "ViT":
        return keras_vit.VisionTransformer(name="vit", **kwargs)
    return keras_vit.create_model(config.model, **kwargs)


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


def _best_so_far(run_dir):
    """Best validation accuracy of an interrupted run, so a resumed ModelCheckpoint does not
    replace best.keras with a worse model."""
    history = run_folder.read_history(run_dir)
    return max(history["val_accuracy"]) if history.get("val_accuracy") else None


def make_callbacks(config, run_dir, chief, resume, throughput, user_callbacks=()):
    """The file writers (chief only), then BackupAndRestore on every worker (the chief's in
    RUN/backup). BackupAndRestore comes last so that when it records epoch e as done, e's
    history row and best.keras are already on disk; a kill between the two leaves rows that
    `_trim_history` drops on resume."""
    callbacks = [keras.callbacks.TerminateOnNaN(), throughput]
    if chief:
        callbacks += [
            keras.callbacks.ModelCheckpoint(
                str(run_dir / "best.keras"),
                monitor="val_accuracy",
                mode="max",
                save_best_only=True,
                initial_value_threshold=_best_so_far(run_dir) if resume else None,
            ),
            keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume),
            keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False),
        ]
    if config.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=config.early_stopping)
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

    Returns a dict: run_dir, metrics (also in metrics.json on the chief), history.
    Raises ValueError for bad options, data or run folders before any training starts.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    run_dir = pathlib.Path(config.out)
    keras.utils.set_random_seed(config.seed)
    recipe.set_precision(config.precision)

    strategy = recipe.make_strategy(config.strategy)
    chief = recipe.is_chief(strategy)
    if config.strategy == "multi_worker":
        from keras_vit.training import compat

        compat.patch_keras_for_multi_worker()
    log(f"strategy {config.strategy} ({strategy.num_replicas_in_sync} replica(s)), precision {config.precision}"
        + ("" if chief else ", non-chief worker: writes no files"))

    log(f"loading data {config.dataset!r}")
    data = data_lib.load_data(
        config.dataset,
        image_size=(config.image_size, config.image_size),
        batch_size=config.batch_size,
        augmentation=augmentation_from(config),
        data_dir=config.data_dir,
        seed=config.seed,
        test_fraction=config.test_fraction,
        validation_fraction=config.validation_fraction,
        cache=config.cache,
    )
    facts = data.facts
    num_train = facts["num_train"] - (facts["num_validation"] if facts["validation"] == "held_out" else 0)
    steps = num_train // config.batch_size
    if config.steps_per_epoch:
        steps = min(steps, config.steps_per_epoch)
    log(f"{facts['num_train']} training / {facts['num_test']} test images, {facts['num_classes']} classes, "
        f"{steps} steps of {config.batch_size} per epoch")

    vit_config = model_config(config, facts["num_classes"])
    resolved = {
        "options": config.to_dict(),
        "model_config": {k: list(v) if isinstance(v, tuple) else v for k, v in vit_config.to_dict().items()},
        "resume_free": list(TrainConfig.RESUME_FREE),
        "keras_vit_version": keras_vit.__version__,
    }
    mode = run_folder.prepare(run_dir, resolved, config.overwrite) if chief else "new"
    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        if mode == "resume":
            log(f"resuming the unfinished run in {run_dir}")
            _trim_history(run_dir)
        run_folder.write_json(run_dir / "config.json", resolved)
        _write_yaml(run_dir / "config.yaml", resolved)
        run_folder.write_json(run_dir / "dataset.json", facts)

    log(f"building {config.model} ({vit_config.num_layers} layers, width {vit_config.hidden_dim}, "
        f"{vit_config.image_size[0]}x{vit_config.image_size[1]} / patch {vit_config.patch_size[0]})")
    total_steps = steps * config.epochs
    with strategy.scope():
        model = build_model(config, facts["num_classes"])
        schedule = recipe.warmup_cosine(
            config.learning_rate,
            total_steps=total_steps,
            warmup_steps=min(int(round(config.warmup_epochs * steps)), total_steps),
            end_learning_rate=config.end_learning_rate,
        )
        optimizer = recipe.make_optimizer(
            model,
            config.optimizer,
            schedule,
            config.weight_decay,
            config.momentum,
            config.clipnorm,
            ema_momentum=config.ema_momentum,
        )
        model.compile(
            optimizer=optimizer,
            loss=recipe.make_loss(config.label_smoothing),
            metrics=["accuracy"],
            jit_compile=config.jit_compile,
        )
    log(f"{model.count_params():,} parameters; fitting {config.epochs} epochs")

    throughput = Throughput(steps * config.batch_size)
    fit_callbacks = make_callbacks(config, run_dir, chief, mode == "resume", throughput, callbacks)
    start = time.perf_counter()
    # A capped epoch reads part of the (finite) training set: repeat it so epochs never run dry.
    train_ds = data.train.repeat() if config.steps_per_epoch else data.train
    history = model.fit(
        train_ds,
        validation_data=data.validation,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch and steps,
        callbacks=fit_callbacks,
        shuffle=False,  # the pipeline shuffles
        verbose=config.verbose,
    )
    fit_seconds = time.perf_counter() - start
    if model.stop_training and any(isinstance(c, keras.callbacks.TerminateOnNaN) for c in fit_callbacks):
        if history.history.get("loss") and history.history["loss"][-1] != history.history["loss"][-1]:
            raise RuntimeError("Training stopped: the loss became NaN (try a lower --learning-rate).")

    metrics = {"run_dir": str(run_dir)}
    if chief:
        log("saving final.keras and evaluating the saved models on the test split")
        run_folder.save_model_atomic(model, run_dir / "final.keras")
        final = evaluate_saved(run_dir / "final.keras", data.test)
        best = evaluate_saved(run_dir / "best.keras", data.test) if (run_dir / "best.keras").exists() else final
        full_history = run_folder.read_history(run_dir)
        val = full_history.get("val_accuracy", [])
        metrics.update(
            test_accuracy=final["accuracy"],
            test_loss=final["loss"],
            best_model_test_accuracy=best["accuracy"],
            best_val_accuracy=max(val) if val else None,
            best_epoch=int(full_history["epoch"][val.index(max(val))]) + 1 if val else None,
            epochs_run=len(val),
            validation=facts["validation"],
            num_test=facts["num_test"],
            fit_seconds_this_session=fit_seconds,
            train_images_per_second=throughput.images_per_second(),
            resumed=mode == "resume",
            strategy=config.strategy,
            replicas=strategy.num_replicas_in_sync,
            precision=config.precision,
        )
        if full_history:
            run_folder.plot_curves(full_history, run_dir / "curves.png")
        run_folder.write_json(run_dir / run_folder.FINISHED_MARKER, metrics)
        log(f"test accuracy {final['accuracy']:.4f} (final.keras), {best['accuracy']:.4f} (best.keras); "
            f"run folder {run_dir}")
    return {"run_dir": run_dir, "metrics": metrics, "history": history.history, "model": model}


def _write_yaml(path, values):
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is in the train extra
        return
    run_folder.write_text_atomic(path, yaml.safe_dump(values, sort_keys=False))
