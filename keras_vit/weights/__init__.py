"""Pretrained weights: checkpoint formats mapped onto keras_vit models."""
