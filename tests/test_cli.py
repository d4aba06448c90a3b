"""The `keras-vit` command: sub-commands, and no TensorFlow start-up noise unless asked."""

import os
import pathlib
import subprocess
import sys

import pytest

from keras_vit import console

KERAS_VIT = pathlib.Path(sys.executable).with_name("keras-vit")
NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cuInit", "cuda drivers", "cudart_stub")


def _run(args, **env):
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell
    return subprocess.run([str(KERAS_VIT), *args], capture_output=True, text=True, timeout=300, env={**environment, **env})


def test_commands_print_no_tensorflow_startup_lines_unless_asked(tmp_path):
    missing = str(tmp_path / "missing.keras")
    quiet = _run(["export", missing])
    assert quiet.returncode == 2
    assert quiet.stderr.strip().splitlines() == [
        f"[keras-vit export] loading {missing}",
        f"keras-vit export: error: {missing} does not exist: give a training run folder or a .keras file.",
    ]
    # --verbose, or the user's own TF_CPP_MIN_LOG_LEVEL, brings TensorFlow's lines back.
    for result in (_run(["export", missing, "--verbose"]), _run(["export", missing], TF_CPP_MIN_LOG_LEVEL="0")):
        assert result.returncode == 2 and any(noise in result.stderr for noise in NOISE), result.stderr


@pytest.mark.parametrize(
    "argv, asks",
    [([], False), (["--verbose"], True), (["--verbose", "3"], True), (["--verbose", "2"], False), (["--verbose=1"], False), (["x", "--verbose"], True)],
)
def test_verbose_asks_for_tensorflow_logs_except_kerass_own_levels(argv, asks):
    assert console.asks_for_tensorflow_logs(argv) is asks


def test_unknown_subcommand_lists_the_known_ones():
    result = _run(["fly"])
    assert result.returncode == 2 and "invalid choice: 'fly'" in result.stderr and "train" in result.stderr
