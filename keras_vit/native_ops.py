"""keras_vit's compiled TensorFlow kernels: `kernels/*.cc`, built with this machine's C++
compiler the first time a training step asks for them, cached, and loaded with
`tf.load_op_library`.

Why compiled code: without XLA, TensorFlow runs each element-wise op and reduction as a
kernel of its own, one pass over memory each. LayerNorm and its gradient are about twenty
such passes per norm, two norms per block; the compiled kernels do each direction in one
(the gain is measured in `docs/benchmarks.md`). Only training graphs use them
(`keras_vit.tensorflow_kernels`): the inference graph, and so every export and saved model,
stays plain TensorFlow ops.

The library is built once per machine, TensorFlow version and source (`-march=native`: the
CPU is part of the cache key) into `$KERAS_HOME/keras_vit_ops/<key>/` and written there
atomically. Without a compiler, or when the build fails, `load()` returns None, a warning
says why, and callers use their `keras.ops` spelling: the same numbers, slower.
`KERAS_VIT_NATIVE_OPS=0` turns the kernels off; `CXX` names the compiler.
"""

import concurrent.futures
import functools
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
import warnings

from keras_vit import system

logger = logging.getLogger("keras_vit.native_ops")

KERNELS_DIR = pathlib.Path(__file__).parent / "kernels"
SOURCES = sorted(KERNELS_DIR.glob("*.cc"))  # compiled into one library
HEADERS = sorted(KERNELS_DIR.glob("*.h"))  # included by them: part of the cache key
LIBRARY_NAME = "keras_vit_ops.so"
DISABLE_VARIABLE = "KERAS_VIT_NATIVE_OPS"
BUILD_TIMEOUT_S = 600


class BuildError(RuntimeError):
    """The kernels could not be compiled here (no compiler, or the compiler failed)."""


def enabled():
    """False when `KERAS_VIT_NATIVE_OPS=0` turns the compiled kernels off."""
    return os.environ.get(DISABLE_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off")


@functools.cache
def load():
    """The loaded op library (its ops as snake_case functions: `keras_vit_layer_norm`, ...),
    or None when the kernels are turned off or cannot be built here (with a warning)."""
    if not enabled():
        return None
    import tensorflow as tf

    try:
        return tf.load_op_library(str(build()))
    except (BuildError, OSError, tf.errors.NotFoundError) as error:
        warnings.warn(
            f"keras_vit's compiled TensorFlow kernels are not available ({error}); training uses "
            f"the slower keras.ops layers and XLA GELU (same numbers). Set {DISABLE_VARIABLE}=0 to "
            "silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def build(cache_dir=None):
    """The path of the compiled library, built first when this machine has none cached for
    this TensorFlow version and these sources. Raises BuildError."""
    compile_command, link_flags = _compile_command(), _link_flags()
    key = _cache_key([*compile_command, *link_flags])
    folder = pathlib.Path(cache_dir or os.path.join(system.keras_home(), "keras_vit_ops")) / key
    library = folder / LIBRARY_NAME
    if library.is_file():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    # Compiled beside its final name, then renamed: a build that fails or is interrupted,
    # or another process building at the same time, never leaves a half-written library.
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        partial = pathlib.Path(scratch) / LIBRARY_NAME
        logger.warning("compiling keras_vit's TensorFlow kernels into %s (once per machine and TensorFlow version)", folder)
        objects = [pathlib.Path(scratch) / f"{source.stem}.o" for source in SOURCES]
        # One compiler per source, side by side: the attention kernel's matrix products
        # take as long to compile as all the others together.
        commands = [[*compile_command, "-c", str(source), "-o", str(out)] for source, out in zip(SOURCES, objects)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(_run, commands))  # raises the first BuildError
        _run([compile_command[0], "-shared", *map(str, objects), *link_flags, "-o", str(partial)])
        if not partial.is_file():
            raise BuildError(f"{compile_command[0]} wrote no library")
        os.replace(partial, library)
    return library


def _run(command):
    """Runs one compiler command; raises BuildError with the compiler's error lines."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"{command[0]} could not run: {error}") from error
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.splitlines()
        raise BuildError(f"{command[0]} failed (exit {result.returncode}): " + " | ".join(errors[-5:]))


def _compiler():
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not compiler:
        raise BuildError("no C++ compiler found: install g++ (or set CXX)")
    return compiler


def _compile_command():
    """The compiler's command line for one source, without its input and output: TensorFlow's
    own flags (headers, ABI, C++17), optimised for this CPU. Symbols stay hidden, so that
    the library's Eigen code is its own, not TensorFlow's build of the same templates."""
    import tensorflow as tf

    compiler = _compiler()
    flags = ["-fPIC", "-O3", "-march=native", *_unsupported_isa_flags(compiler), "-fopenmp-simd"]
    flags += ["-fvisibility=hidden", "-fvisibility-inlines-hidden", "-w"]
    return [compiler, *flags, *tf.sysconfig.get_compile_flags()]


@functools.cache
def _unsupported_isa_flags(compiler):
    """Flags that turn off the instruction sets `-march=native` would enable and TensorFlow's
    Eigen headers cannot be compiled with. As of TensorFlow 2.21: AVX512-FP16 (Intel Sapphire
    Rapids and later), whose packet file calls `predux_half_dowto4`, a function that Eigen
    version no longer has. The kernels are float32, so they lose nothing by it."""
    try:
        macros = subprocess.run(
            [compiler, "-march=native", "-dM", "-E", "-x", "c++", os.devnull],
            capture_output=True, text=True, timeout=60,
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"{compiler} could not run: {error}") from error
    return ["-mno-avx512fp16"] if "__AVX512FP16__" in macros else []


def _link_flags():
    """TensorFlow's library, which the kernels link against."""
    import tensorflow as tf

    return tf.sysconfig.get_link_flags()


def _cache_key(command):
    """What the library depends on: the sources, the command (TensorFlow's headers and
    library path, the compiler), TensorFlow's version and the CPU (`-march=native`)."""
    import tensorflow as tf

    digest = hashlib.sha256()
    for source in (*SOURCES, *HEADERS):
        digest.update(source.read_bytes())
    for part in (*command, tf.__version__, tf.version.GIT_VERSION, system.cpu_model(), system.cpu_flags()):
        digest.update(str(part).encode() + b"\0")
    return digest.hexdigest()[:16]
