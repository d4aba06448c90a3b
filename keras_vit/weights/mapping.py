"""Where each `keras_vit` weight lives in each checkpoint format: one table per format.

Keys of a table are the paths of the model's variables (`layer/sub-layer/variable`, `{i}` =
encoder block index; `loader.model_variables` lists them for a built model). Values are
`(transform, source_key, ...)`: the checkpoint tensors (names normalised by
`checkpoint.read_checkpoint`) and the name of the function in `TRANSFORMS` that turns them
into the Keras value. Keras layouts: Conv2D kernel [ph, pw, C, D], Dense kernel [in, out],
fused q/k/v kernel [D, 3D] with columns [q | k | v], each heads-major. A target a format
has no tensor for (a family option it never has) is simply absent from its table.
"""

import numpy as np

# ---------------------------------------------------------------------------------------
# Original ViT (vit_jax / flax) `.npz`: `/`-joined flax parameter paths, as released for
# the paper and the AugReg checkpoints. q/k/v kernels are [D, heads, head_dim], biases
# [heads, head_dim]; the output kernel is [heads, head_dim, D].
_NPZ_BLOCK = "Transformer/encoderblock_{i}"
_NPZ_ATTENTION = _NPZ_BLOCK + "/MultiHeadDotProductAttention_1"
NPZ_MAPPING = {
    "patch_embedding/projection/kernel": ("copy", "embedding/kernel"),
    "patch_embedding/projection/bias": ("copy", "embedding/bias"),
    "class_token/token": ("copy", "cls"),
    "position_embedding/embedding": ("copy", "Transformer/posembed_input/pos_embedding"),
    "encoder_block_{i}/attention_norm/gamma": ("copy", _NPZ_BLOCK + "/LayerNorm_0/scale"),
    "encoder_block_{i}/attention_norm/beta": ("copy", _NPZ_BLOCK + "/LayerNorm_0/bias"),
    "encoder_block_{i}/attention/qkv/kernel": (
        "concat_heads",
        _NPZ_ATTENTION + "/query/kernel",
        _NPZ_ATTENTION + "/key/kernel",
        _NPZ_ATTENTION + "/value/kernel",
    ),
    "encoder_block_{i}/attention/qkv/bias": (
        "concat_heads",
        _NPZ_ATTENTION + "/query/bias",
        _NPZ_ATTENTION + "/key/bias",
        _NPZ_ATTENTION + "/value/bias",
    ),
    "encoder_block_{i}/attention/output/kernel": ("merge_heads", _NPZ_ATTENTION + "/out/kernel"),
    "encoder_block_{i}/attention/output/bias": ("copy", _NPZ_ATTENTION + "/out/bias"),
    "encoder_block_{i}/mlp_norm/gamma": ("copy", _NPZ_BLOCK + "/LayerNorm_2/scale"),
    "encoder_block_{i}/mlp_norm/beta": ("copy", _NPZ_BLOCK + "/LayerNorm_2/bias"),
    "encoder_block_{i}/mlp_dense_1/kernel": ("copy", _NPZ_BLOCK + "/MlpBlock_3/Dense_0/kernel"),
    "encoder_block_{i}/mlp_dense_1/bias": ("copy", _NPZ_BLOCK + "/MlpBlock_3/Dense_0/bias"),
    "encoder_block_{i}/mlp_dense_2/kernel": ("copy", _NPZ_BLOCK + "/MlpBlock_3/Dense_1/kernel"),
    "encoder_block_{i}/mlp_dense_2/bias": ("copy", _NPZ_BLOCK + "/MlpBlock_3/Dense_1/bias"),
    "encoder_norm/gamma": ("copy", "Transformer/encoder_norm/scale"),
    "encoder_norm/beta": ("copy", "Transformer/encoder_norm/bias"),
    "pre_logits/kernel": ("copy", "pre_logits/kernel"),
    "pre_logits/bias": ("copy", "pre_logits/bias"),
    "head/kernel": ("copy", "head/kernel"),
    "head/bias": ("copy", "head/bias"),
}

# Current flax names the submodules of an encoder block by their own counter
# (`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`); the released checkpoints
# by one counter over the block. Renamed to the released names before mapping.
NPZ_LINEN_RENAMES = {
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}

# ---------------------------------------------------------------------------------------
# timm `VisionTransformer` state dict: torch layouts, Linear weight (out, in), Conv2d
# weight (out, in, h, w); q/k/v already fused as in keras_vit.
_TIMM_BLOCK = "blocks.{i}"
TIMM_MAPPING = {
    "patch_embedding/projection/kernel": ("torch_conv", "patch_embed.proj.weight"),
    "patch_embedding/projection/bias": ("copy", "patch_embed.proj.bias"),
    "class_token/token": ("copy", "cls_token"),
    "distillation_token/token": ("copy", "dist_token"),  # DeiT distilled
    "register_tokens/token": ("copy", "reg_token"),
    "position_embedding/embedding": ("copy", "pos_embed"),
    "pre_norm/gamma": ("copy", "norm_pre.weight"),  # CLIP
    "pre_norm/beta": ("copy", "norm_pre.bias"),
    "encoder_block_{i}/attention_norm/gamma": ("copy", _TIMM_BLOCK + ".norm1.weight"),
    "encoder_block_{i}/attention_norm/beta": ("copy", _TIMM_BLOCK + ".norm1.bias"),
    "encoder_block_{i}/attention/qkv/kernel": ("torch_linear", _TIMM_BLOCK + ".attn.qkv.weight"),
    "encoder_block_{i}/attention/qkv/bias": ("copy", _TIMM_BLOCK + ".attn.qkv.bias"),
    "encoder_block_{i}/attention/output/kernel": ("torch_linear", _TIMM_BLOCK + ".attn.proj.weight"),
    "encoder_block_{i}/attention/output/bias": ("copy", _TIMM_BLOCK + ".attn.proj.bias"),
    "encoder_block_{i}/attention_scale/gamma": ("copy", _TIMM_BLOCK + ".ls1.gamma"),  # LayerScale
    "encoder_block_{i}/mlp_norm/gamma": ("copy", _TIMM_BLOCK + ".norm2.weight"),
    "encoder_block_{i}/mlp_norm/beta": ("copy", _TIMM_BLOCK + ".norm2.bias"),
    "encoder_block_{i}/mlp_dense_1/kernel": ("torch_linear", _TIMM_BLOCK + ".mlp.fc1.weight"),
    "encoder_block_{i}/mlp_dense_1/bias": ("copy", _TIMM_BLOCK + ".mlp.fc1.bias"),
    "encoder_block_{i}/mlp_dense_2/kernel": ("torch_linear", _TIMM_BLOCK + ".mlp.fc2.weight"),
    "encoder_block_{i}/mlp_dense_2/bias": ("copy", _TIMM_BLOCK + ".mlp.fc2.bias"),
    "encoder_block_{i}/mlp_scale/gamma": ("copy", _TIMM_BLOCK + ".ls2.gamma"),
    "encoder_norm/gamma": ("copy", "norm.weight"),
    "encoder_norm/beta": ("copy", "norm.bias"),
    "fc_norm/gamma": ("copy", "fc_norm.weight"),  # the norm after pooling (global_pool="avg")
    "fc_norm/beta": ("copy", "fc_norm.bias"),
    # The MAP head (global_pool="map", AttentionPoolLatent).
    "attention_pooling/latent": ("copy", "attn_pool.latent"),
    "attention_pooling/query/kernel": ("torch_linear", "attn_pool.q.weight"),
    "attention_pooling/query/bias": ("copy", "attn_pool.q.bias"),
    "attention_pooling/key_value/kernel": ("torch_linear", "attn_pool.kv.weight"),
    "attention_pooling/key_value/bias": ("copy", "attn_pool.kv.bias"),
    "attention_pooling/output/kernel": ("torch_linear", "attn_pool.proj.weight"),
    "attention_pooling/output/bias": ("copy", "attn_pool.proj.bias"),
    "attention_pooling/norm/gamma": ("copy", "attn_pool.norm.weight"),
    "attention_pooling/norm/beta": ("copy", "attn_pool.norm.bias"),
    "attention_pooling/mlp_dense_1/kernel": ("torch_linear", "attn_pool.mlp.fc1.weight"),
    "attention_pooling/mlp_dense_1/bias": ("copy", "attn_pool.mlp.fc1.bias"),
    "attention_pooling/mlp_dense_2/kernel": ("torch_linear", "attn_pool.mlp.fc2.weight"),
    "attention_pooling/mlp_dense_2/bias": ("copy", "attn_pool.mlp.fc2.bias"),
    # Older timm releases kept the paper's representation layer as `pre_logits.fc`.
    "pre_logits/kernel": ("torch_linear", "pre_logits.fc.weight"),
    "pre_logits/bias": ("copy", "pre_logits.fc.bias"),
    "head/kernel": ("torch_linear", "head.weight"),
    "head/bias": ("copy", "head.bias"),
    "head_dist/kernel": ("torch_linear", "head_dist.weight"),
    "head_dist/bias": ("copy", "head_dist.bias"),
}

# ---------------------------------------------------------------------------------------
# OpenAI CLIP's image tower (`visual.*` of the OpenAI and OpenCLIP state dicts, e.g. timm's
# `open_clip_model.safetensors`; names after stripping `visual.`): torch layouts, the
# class token a [D] vector, the position embedding [T, D], no patch bias, a LayerNorm
# before the blocks (`ln_pre`) and the projection to the embedding, [D, E] without bias,
# as the classifier.
_CLIP_BLOCK = "transformer.resblocks.{i}"
OPENAI_CLIP_MAPPING = {
    "patch_embedding/projection/kernel": ("torch_conv", "conv1.weight"),
    "class_token/token": ("token", "class_embedding"),
    "position_embedding/embedding": ("copy", "positional_embedding"),
    "pre_norm/gamma": ("copy", "ln_pre.weight"),
    "pre_norm/beta": ("copy", "ln_pre.bias"),
    "encoder_block_{i}/attention_norm/gamma": ("copy", _CLIP_BLOCK + ".ln_1.weight"),
    "encoder_block_{i}/attention_norm/beta": ("copy", _CLIP_BLOCK + ".ln_1.bias"),
    "encoder_block_{i}/attention/qkv/kernel": ("torch_linear", _CLIP_BLOCK + ".attn.in_proj_weight"),
    "encoder_block_{i}/attention/qkv/bias": ("copy", _CLIP_BLOCK + ".attn.in_proj_bias"),
    "encoder_block_{i}/attention/output/kernel": ("torch_linear", _CLIP_BLOCK + ".attn.out_proj.weight"),
    "encoder_block_{i}/attention/output/bias": ("copy", _CLIP_BLOCK + ".attn.out_proj.bias"),
    "encoder_block_{i}/mlp_norm/gamma": ("copy", _CLIP_BLOCK + ".ln_2.weight"),
    "encoder_block_{i}/mlp_norm/beta": ("copy", _CLIP_BLOCK + ".ln_2.bias"),
    "encoder_block_{i}/mlp_dense_1/kernel": ("torch_linear", _CLIP_BLOCK + ".mlp.c_fc.weight"),
    "encoder_block_{i}/mlp_dense_1/bias": ("copy", _CLIP_BLOCK + ".mlp.c_fc.bias"),
    "encoder_block_{i}/mlp_dense_2/kernel": ("torch_linear", _CLIP_BLOCK + ".mlp.c_proj.weight"),
    "encoder_block_{i}/mlp_dense_2/bias": ("copy", _CLIP_BLOCK + ".mlp.c_proj.bias"),
    "encoder_norm/gamma": ("copy", "ln_post.weight"),
    "encoder_norm/beta": ("copy", "ln_post.bias"),
    "head/kernel": ("copy", "proj"),
    "head/bias": ("zero_bias", "proj"),
}

# ---------------------------------------------------------------------------------------
# Hugging Face `ViTModel` / `ViTForImageClassification` (names after stripping `vit.`):
# torch layouts, separate q/k/v Linears. The `ViTModel` pooler (Dense + tanh on the class
# token) is the paper's representation layer.
_HF_BLOCK = "encoder.layer.{i}"
HF_MAPPING = {
    "patch_embedding/projection/kernel": ("torch_conv", "embeddings.patch_embeddings.projection.weight"),
    "patch_embedding/projection/bias": ("copy", "embeddings.patch_embeddings.projection.bias"),
    "class_token/token": ("copy", "embeddings.cls_token"),
    "position_embedding/embedding": ("copy", "embeddings.position_embeddings"),
    "encoder_block_{i}/attention_norm/gamma": ("copy", _HF_BLOCK + ".layernorm_before.weight"),
    "encoder_block_{i}/attention_norm/beta": ("copy", _HF_BLOCK + ".layernorm_before.bias"),
    "encoder_block_{i}/attention/qkv/kernel": (
        "torch_linear_concat",
        _HF_BLOCK + ".attention.attention.query.weight",
        _HF_BLOCK + ".attention.attention.key.weight",
        _HF_BLOCK + ".attention.attention.value.weight",
    ),
    "encoder_block_{i}/attention/qkv/bias": (
        "concat",
        _HF_BLOCK + ".attention.attention.query.bias",
        _HF_BLOCK + ".attention.attention.key.bias",
        _HF_BLOCK + ".attention.attention.value.bias",
    ),
    "encoder_block_{i}/attention/output/kernel": ("torch_linear", _HF_BLOCK + ".attention.output.dense.weight"),
    "encoder_block_{i}/attention/output/bias": ("copy", _HF_BLOCK + ".attention.output.dense.bias"),
    "encoder_block_{i}/mlp_norm/gamma": ("copy", _HF_BLOCK + ".layernorm_after.weight"),
    "encoder_block_{i}/mlp_norm/beta": ("copy", _HF_BLOCK + ".layernorm_after.bias"),
    "encoder_block_{i}/mlp_dense_1/kernel": ("torch_linear", _HF_BLOCK + ".intermediate.dense.weight"),
    "encoder_block_{i}/mlp_dense_1/bias": ("copy", _HF_BLOCK + ".intermediate.dense.bias"),
    "encoder_block_{i}/mlp_dense_2/kernel": ("torch_linear", _HF_BLOCK + ".output.dense.weight"),
    "encoder_block_{i}/mlp_dense_2/bias": ("copy", _HF_BLOCK + ".output.dense.bias"),
    "encoder_norm/gamma": ("copy", "layernorm.weight"),
    "encoder_norm/beta": ("copy", "layernorm.bias"),
    "pre_logits/kernel": ("torch_linear", "pooler.dense.weight"),
    "pre_logits/bias": ("copy", "pooler.dense.bias"),
    "head/kernel": ("torch_linear", "classifier.weight"),
    "head/bias": ("copy", "classifier.bias"),
}

MAPPINGS = {"npz": NPZ_MAPPING, "timm": TIMM_MAPPING, "hf": HF_MAPPING, "openai_clip": OPENAI_CLIP_MAPPING}

# One key that only its format has (after any prefix): how a checkpoint's format is told.
# Whatever stands before it in the checkpoint (`opt/target/`, `vit.`, `visual.`) is a
# prefix to strip.
FORMAT_MARKERS = {
    "npz": "embedding/kernel",
    "timm": "patch_embed.proj.weight",
    "hf": "embeddings.patch_embeddings.projection.weight",
    "openai_clip": "conv1.weight",
}
# Formats whose files hold other models' tensors without the prefix (CLIP's text tower):
# only the prefixed tensors are read.
PREFIX_ONLY_FORMATS = ("openai_clip",)

# Tensors a format may hold that keras_vit has no use for, and that are safe to skip.
IGNORED_KEYS = {
    "npz": (),
    "timm": (),
    "hf": ("embeddings.mask_token",),  # only used by masked-image-modelling heads
    "openai_clip": (),
}

# How each source computes, so that a loaded model reproduces it: MLP activation, LayerNorm
# epsilon (Hugging Face's come from config.json), position-embedding resize method.
SOURCE_NUMERICS = {
    "npz": dict(mlp_activation="gelu_tanh", layer_norm_epsilon=1e-6, resize_method="bilinear"),
    "timm": dict(mlp_activation="gelu", layer_norm_epsilon=1e-6, resize_method="bicubic"),
    "hf": dict(mlp_activation="gelu", layer_norm_epsilon=1e-12, resize_method="bicubic"),
    "openai_clip": dict(mlp_activation="quick_gelu", layer_norm_epsilon=1e-5, resize_method="bicubic"),
}

FORMAT_NAMES = {
    "npz": "original ViT .npz (vit_jax)",
    "timm": "timm VisionTransformer state dict",
    "hf": "Hugging Face ViT",
    "openai_clip": "OpenAI CLIP image tower",
}


def _concat_heads(*arrays):
    """[D, heads, head_dim] kernels or [heads, head_dim] biases -> [D, 3D] or [3D]."""
    flat = [a.reshape(a.shape[0], -1) if a.ndim == 3 else a.reshape(-1) for a in arrays]
    return np.concatenate(flat, axis=-1)


def _merge_heads(kernel):
    """[heads, head_dim, D] -> [D_in = heads * head_dim, D]."""
    return kernel.reshape(-1, kernel.shape[-1])


def _torch_linear(weight):
    """(out, in) -> [in, out]."""
    return weight.T


def _torch_conv(weight):
    """(out, in, h, w) -> [h, w, in, out]."""
    return weight.transpose(2, 3, 1, 0)


TRANSFORMS = {
    "copy": lambda array: array,
    "token": lambda vector: vector.reshape(1, 1, -1),  # [D] -> [1, 1, D]
    "zero_bias": lambda kernel: np.zeros(kernel.shape[-1], np.float32),  # a Dense with no bias
    "concat_heads": _concat_heads,
    "merge_heads": _merge_heads,
    "torch_linear": _torch_linear,
    "torch_linear_concat": lambda *weights: np.concatenate([w.T for w in weights], axis=-1),
    "torch_conv": _torch_conv,
    "concat": lambda *arrays: np.concatenate(arrays, axis=-1),
}
