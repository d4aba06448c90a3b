"""Reads an `.npz` checkpoint (the original ViT format) into plain numpy arrays."""

import zipfile
import zlib

import numpy as np

from keras_vit.weights.errors import CheckpointError


def read_npz(path):
    """`{name: array}` of every array in the `.npz` at `path`, read eagerly.

    Pickled (object) arrays are refused (`allow_pickle=False`). A truncated or corrupt
    file raises `CheckpointError` naming the file.
    """
    try:
        # Opened here, not by np.load: it leaves its own handle open when the file is no zip.
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as archive:
            # Members are decompressed lazily: read them all here so that a damaged member
            # fails now, with the file's name, and not later mid-load.
            return {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"Cannot read {path} as an .npz checkpoint (truncated or corrupt file?): {error}"
        ) from None
