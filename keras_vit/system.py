"""Facts about this machine and its packages (for export reports, benchmarks and the
build of `native_ops`), and where Keras keeps its files here."""

import importlib.metadata
import os
import platform


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags():
    """The vector-instruction flags of the CPU (avx*, fma, amx*), space-separated."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return " ".join(sorted(f for f in flags if f.startswith(("avx", "fma", "amx"))))
    except OSError:
        pass
    return ""


def keras_home():
    """The folder Keras keeps its files in: `$KERAS_HOME` (default `~/.keras`), or
    `/tmp/.keras` when that is not writable."""
    base = os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))
    try:
        os.makedirs(base, exist_ok=True)
    except OSError:
        pass
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return base


def machine():
    """"<CPU model>, <N> cores"."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def package_versions(names):
    """{name: version or None} of the distributions `names`, and Python's."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
