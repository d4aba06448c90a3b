"""One verifier for every artifact: does it compute what the Keras model computes?

An artifact is seen through a runner, `run(images float32 [B, H, W, 3]) -> logits [B, C]`
(numpy). `verify` runs it on the verification images at batch 1 and in batches of 8, and
compares with the Keras logits on the same images:

- float32 artifacts: max abs logit difference <= 1e-4;
- float16: max abs logit difference <= 1e-2 x max(1, max |Keras logit|), i.e. 1e-2 for
  logits within [-1, 1], relative to the logit scale beyond. Rounding the weights to float16
  alone moves the logits in proportion to their scale (docs/benchmarks.md, "Measured
  facts"), so a fixed 1e-2 would fail models by their logit scale, not by the export;
- int8 (dynamic range and full integer): top-1 agreement >= 98% and, when the images have
  labels, accuracy at most 1 point below Keras'. Only a drop fails: a gain is bounded by
  the agreement (98% agreement moves accuracy by 2 points at most), and a quantized model
  that happens to be right on a few more images is not a broken export.

`median_latency_ms` times a runner on one batch.
"""

import time

import numpy as np

BATCH_SIZE = 8
LATENCY_REPEATS = 20
LATENCY_WARMUP = 3

# precision -> the rule an artifact of that precision must meet.
TOLERANCES = {
    "float32": {"max_abs_diff": 1e-4},
    "float16": {"max_abs_diff_relative": 1e-2},
    "int8": {"min_top1_agreement": 0.98, "max_accuracy_drop": 0.01},
}


def predict(run, images, batch_size=BATCH_SIZE):
    """Runs `run` over `images` [N, H, W, 3] in batches -> logits [N, C]."""
    return np.concatenate([run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def verify(run, images, reference_logits, labels=None, precision="float32"):
    """Checks one artifact against the Keras logits.

    Args:
        run: the artifact's runner.
        images: float32 [N, H, W, 3] normalised verification images (N >= 8).
        reference_logits: float32 [N, C], the Keras model's logits on `images`.
        labels: int [N] or None.
        precision: a key of `TOLERANCES`.

    Returns: dict with `max_abs_diff`, `top1_agreement`, `accuracy` (None without labels),
    `checked_batch_sizes`, `passed` and `failures` (human-readable reasons).
    """
    rule = TOLERANCES[precision]
    batched = predict(run, images)  # batches of 8 (the last one may be shorter)
    single = np.concatenate([run(images[i : i + 1]) for i in range(min(4, len(images)))])
    if batched.shape != reference_logits.shape:
        return _result(None, None, None, [f"output shape {batched.shape} != Keras {reference_logits.shape}"])

    max_abs_diff = float(max(np.abs(batched - reference_logits).max(), np.abs(single - reference_logits[: len(single)]).max()))
    top1 = batched.argmax(-1)
    agreement = float(np.mean(top1 == reference_logits.argmax(-1)))
    accuracy = None if labels is None else float(np.mean(top1 == labels))
    keras_accuracy = None if labels is None else float(np.mean(reference_logits.argmax(-1) == labels))

    failures = []
    if not np.all(np.isfinite(batched)):
        failures.append("non-finite outputs")
    if "max_abs_diff" in rule and not max_abs_diff <= rule["max_abs_diff"]:
        failures.append(f"max abs logit diff {max_abs_diff:.3g} > {rule['max_abs_diff']:g}")
    if "max_abs_diff_relative" in rule:
        bound = rule["max_abs_diff_relative"] * max(1.0, float(np.abs(reference_logits).max()))
        if not max_abs_diff <= bound:
            failures.append(
                f"max abs logit diff {max_abs_diff:.3g} > {rule['max_abs_diff_relative']:g} x max(1, max |logit|) = {bound:.3g}"
            )
    if "min_top1_agreement" in rule and agreement < rule["min_top1_agreement"]:
        failures.append(f"top-1 agreement {agreement:.2%} < {rule['min_top1_agreement']:.0%}")
    # + 1e-9: a drop of exactly one point (5 of 500 images) is "at most 1 point" in floats too.
    if "max_accuracy_drop" in rule and accuracy is not None and keras_accuracy - accuracy > rule["max_accuracy_drop"] + 1e-9:
        failures.append(
            f"accuracy {accuracy:.2%} is more than {rule['max_accuracy_drop']:.0%} below Keras' {keras_accuracy:.2%}"
        )
    return _result(max_abs_diff, agreement, accuracy, failures)


def _result(max_abs_diff, agreement, accuracy, failures):
    return {
        "max_abs_diff": max_abs_diff,
        "top1_agreement": agreement,
        "accuracy": accuracy,
        "checked_batch_sizes": [1, BATCH_SIZE],
        "passed": not failures,
        "failures": failures,
    }


def median_latency_ms(run, batch, repeats=LATENCY_REPEATS, warmup=LATENCY_WARMUP):
    """Median wall time in milliseconds of `run(batch)` over `repeats` calls, after warm-up."""
    for _ in range(warmup):
        run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def verify_top_k(class_ids, scores, reference_logits, tolerance=TOLERANCES["float32"]["max_abs_diff"]):
    """Checks a top-k output (the SavedModel's bytes signature) against the Keras logits.

    Args: class_ids int [N, k], scores float [N, k] (probabilities, best first),
    reference_logits [N, C]. Ties between classes cannot fail the check: the scores are
    compared with the sorted Keras probabilities, and the probability Keras gives each
    returned class with its score.
    """
    shifted = np.exp(reference_logits - reference_logits.max(-1, keepdims=True))
    probabilities = shifted / shifted.sum(-1, keepdims=True)
    k = class_ids.shape[-1]
    expected_scores = -np.sort(-probabilities, axis=-1)[:, :k]
    score_diff = float(np.abs(scores - expected_scores).max())
    id_diff = float(np.abs(np.take_along_axis(probabilities, class_ids.astype(np.int64), -1) - scores).max())
    failures = []
    if not max(score_diff, id_diff) <= tolerance:
        failures.append(f"top-k scores differ from Keras by {max(score_diff, id_diff):.3g} > {tolerance:g}")
    return {
        "max_abs_score_diff": max(score_diff, id_diff),
        "top1_agreement": float(np.mean(class_ids[:, 0] == reference_logits.argmax(-1))),
        "failures": failures,
    }
