from setuptools import setup

setup(
    name="keras_vit",
    version="0.1.0",
    description="Vision Transformers for Keras 3: faithful models, pretrained weights, training and export.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.14",
    # training/ and export/ live at the top of the repo but install under the keras_vit
    # namespace, so nothing generic like a top-level `export` package lands in site-packages.
    packages=["keras_vit", "keras_vit.labels", "keras_vit.weights", "keras_vit.training", "keras_vit.export"],
    package_dir={
        "keras_vit": "keras_vit",
        "keras_vit.training": "training",
        "keras_vit.export": "export",
    },
    package_data={
        "keras_vit.labels": ["*.txt"],  # the ImageNet-1k / 21k label sets
        "keras_vit": ["kernels/*.cc", "kernels/*.h"],  # compiled on first use (keras_vit/native_ops.py)
    },
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "numpy>=1.26,<3",
        "pillow>=10,<14",  # decoding image files (keras_vit.preprocessing)
    ],
    extras_require={
        "train": [
            "keras-cv>=0.9,<0.10",
            "tensorflow-datasets>=4.9.10,<5",
            # As of tensorflow-datasets 4.9.10 (2026-12), preparing a dataset imports
            # importlib_resources, declared for Python < 3.9 only (tensorflow/datasets#11212).
            "importlib_resources>=6,<8",
            "scikit-learn>=1.5,<2",
            "matplotlib>=3.8,<4",
            "pyyaml>=6,<7",
            "tensorboard>=2.20,<2.22",  # the TensorBoard callback's summary writer
        ],
        "export": [
            "tf2onnx>=1.17,<1.18",
            "onnx>=1.17,<2",
            "onnxruntime>=1.20,<2",
            "ai-edge-litert>=2.0,<3",
        ],
        "bench": [
            "keras-hub>=0.32,<0.33",  # the peer the benchmarks compare against
        ],
        "test": [
            "keras_vit[train,export,bench]",
            "pytest>=8,<10",
            "pytest-xdist>=3.5,<4",
            "ruff==0.17.6",  # `make test` lints first; pinned so that CI and developers agree
            "jax>=0.10,<0.11",  # the JAX-backend tests (tests/test_jax_backend.py)
        ],
    },
    entry_points={"console_scripts": ["keras-vit=keras_vit.cli:main"]},
)
