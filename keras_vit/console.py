"""What the `keras-vit` commands print: progress lines on stderr, and no TensorFlow start-up noise.

Progress (one line per stage) goes to stderr, so that stdout carries only results: tables,
JSON, CSV, Keras' progress bars.

TensorFlow's C++ runtime prints start-up lines when it is imported (the oneDNN notice, the
CUDA-driver probe, and on a machine without a GPU a `cuInit` error) before its own log
level applies. Under the `keras-vit` command `quiet_tensorflow_startup()` hides them; a user
who sets `TF_CPP_MIN_LOG_LEVEL` or passes `--verbose` (`--verbose 3` to `keras-vit train`,
whose `--verbose 0..2` is Keras' progress-bar setting) sees them as usual.
"""

import contextlib
import os
import re
import sys
import tempfile

COMMAND = "keras-vit"
# absl's "I1201 12:00:00.000 123 file.cc:1] ..." info and warning lines, and its notice that
# logging is not initialised yet; anything else TensorFlow prints is passed on.
_STARTUP_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} )")


def log(command, message):
    """`[keras-vit COMMAND] message` on stderr, flushed (one line per stage of a command)."""
    print(f"[{COMMAND} {command}] {message}", file=sys.stderr, flush=True)


def error(command, message):
    """`keras-vit COMMAND: error: message` on stderr (bad input; the command then exits 2)."""
    print(f"{COMMAND} {command}: error: {message}", file=sys.stderr, flush=True)


class ProgressBar:
    """Keras' progress bar (`keras.utils.Progbar`) drawn on stderr, so that a command's stdout
    stays JSON or CSV. `update(done)` with the count done so far, out of `total` `unit`."""

    def __init__(self, total, unit="step"):
        import keras

        with contextlib.redirect_stdout(sys.stderr):  # Progbar writes to (and asks) sys.stdout
            self._bar = keras.utils.Progbar(total, unit_name=unit)

    def update(self, done):
        with contextlib.redirect_stdout(sys.stderr):
            self._bar.update(done)


def running_as_command(argv=None, orig_argv=None):
    """True when this process is the `keras-vit` console script or `python -m keras_vit.cli`."""
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    script = os.path.basename(argv[0]) if argv else ""
    as_module = any(a == "-m" and b == "keras_vit.cli" for a, b in zip(orig_argv, orig_argv[1:]))
    return script == COMMAND or as_module


def asks_for_tensorflow_logs(argv):
    """True for `--verbose` alone or `--verbose 3` (or more), not for `--verbose 0..2`."""
    for i, arg in enumerate(argv):
        level = arg.partition("=")[2] if arg.startswith("--verbose=") else None
        if arg == "--verbose":
            level = argv[i + 1] if i + 1 < len(argv) else ""
        if level is not None:
            return not (level.isdigit() and int(level) < 3)
    return False


def quiet_tensorflow_startup():
    """Imports TensorFlow with its start-up lines hidden, when this process is the `keras-vit`
    command, TensorFlow is not imported yet, the user did not set `TF_CPP_MIN_LOG_LEVEL` and
    did not ask for them (`asks_for_tensorflow_logs`). Lines that are not start-up noise are
    printed all the same."""
    if not running_as_command() or "tensorflow" in sys.modules or asks_for_tensorflow_logs(sys.argv[1:]):
        return
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # later C++ lines, e.g. the cuInit error
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
    for line in lines:
        if not _STARTUP_NOISE.match(line):
            print(line, file=sys.stderr)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)  # tf2onnx's and SavedModel's INFO/WARNING lines
    except ImportError:
        pass
