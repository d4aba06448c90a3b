"""Exporting ViTs to SavedModel, TFLite/LiteRT and ONNX, each verified against Keras."""
