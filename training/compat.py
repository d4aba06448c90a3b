"""COMPATIBILITY SHIMS for Keras 3.15 + TensorFlow 2.21 under `tf.distribute` strategies.

Fixes 1 and 2: `model.fit` under `MultiWorkerMirroredStrategy`.

Upstream bug: keras-team/keras#20585 (open). With Keras 3.15 and TF 2.21, `model.fit`
under `tf.distribute.MultiWorkerMirroredStrategy` fails twice:

1. `TensorFlowTrainer._maybe_symbolic_build` builds the model from the first distributed
   batch by calling `strategy.reduce("MEAN", batch, axis=None)`, which multi-worker
   strategies cannot do on the input batch ("Attempt to convert a value (PerReplica ...)").
   The build only needs shapes and dtypes, so the fix uses this worker's first local
   replica's batch instead.
2. `reduce_per_replica(..., reduction="mean")` reduces every metric with
   `strategy.reduce("MEAN", v, axis=0)`; metrics are scalars, so TF fails with
   "Invalid reduction dimension 0 for input with 0 dimensions". The fix reduces scalars
   with `axis=None` (the mean over replicas, which is what axis=0 means for a [replicas]
   stack) and keeps axis=0 for everything else.

`patch_keras_for_multi_worker()` applies both, only for the Keras versions listed in
`CHECKED_KERAS_VERSIONS` (others: a warning, nothing patched), and only once. `train()`
calls it only when the strategy is "multi_worker"; single-worker strategies never see it.
tests/test_distributed.py::test_multi_worker_two_processes proves it with two workers.

Fix 3: global-norm gradient clipping under any strategy with several replicas. Keras's
`BaseOptimizer.apply` clips each replica's gradient (of the loss already divided by the
number of replicas) *before* the TF backend's `_backend_update_step` sums them across
replicas, so the clip threshold acts on partial gradients and two replicas train
differently from one device (how far: docs/benchmarks.md, "Measured facts").
`clip_after_cross_replica_sum(optimizer)` moves the clip after the sum, on this optimizer
instance only: its saved config stays a plain Keras optimizer. Checked by
tests/test_distributed.py::test_mirrored_two_devices_matches_one_device.
"""

import warnings

import keras

CHECKED_KERAS_VERSIONS = ("3.15.",)
_applied = False


def keras_version_checked():
    return keras.__version__.startswith(CHECKED_KERAS_VERSIONS)


def patch_keras_for_multi_worker():
    """Applies the two fixes above to Keras's TensorFlow trainer. Returns True if applied."""
    global _applied
    if _applied:
        return True
    if not keras_version_checked():
        warnings.warn(
            f"keras_vit.training.compat: multi-worker fixes for keras-team/keras#20585 were checked "
            f"with Keras {CHECKED_KERAS_VERSIONS}, not {keras.__version__}; not applied.",
            stacklevel=2,
        )
        return False

    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Same as Keras 3.15's, except that a distributed batch is not reduced across
        # workers: the first local replica's batch has the shapes the build needs.
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(
                    lambda x: self.distribute_strategy.experimental_local_results(x)[0]
                    if isinstance(x, tf.distribute.DistributedValues)
                    else x,
                    batch,
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):

            def _reduce(v):
                rank = v.values[0].shape.rank if tf_trainer._is_per_replica_instance(v) else v.shape.rank
                return strategy.reduce("MEAN", v, axis=None if rank == 0 else 0)

            return tree.map_structure(_reduce, values)
        return original_reduce(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    _applied = True
    return True


def clip_after_cross_replica_sum(optimizer):
    """Fix 3: clips the all-reduced gradient by `optimizer.global_clipnorm` (same as Keras
    on one device). Returns `optimizer`; unchanged without global clipping, with another
    backend, or with an unchecked Keras version (then Keras clips per replica, as usual)."""
    clipnorm = optimizer.global_clipnorm
    if not clipnorm or keras.backend.backend() != "tensorflow" or not keras_version_checked():
        return optimizer
    import tensorflow as tf

    def no_clip_before_sum(grads):
        return grads

    def update_step_with_clip_after_sum(grads, trainable_variables, learning_rate):
        # Keras 3.15's TF `_backend_update_step`, with the clip between the sum and the update.
        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        grads_and_vars = optimizer._all_reduce_sum_gradients(list(zip(grads, variables)))
        clipped, _ = tf.clip_by_global_norm([g for g, _ in grads_and_vars], clipnorm)
        tf.__internal__.distribute.interim.maybe_merge_call(
            optimizer._distributed_tf_update_step,
            optimizer._distribution_strategy,
            list(zip(clipped, [v for _, v in grads_and_vars])),
            learning_rate,
        )

    optimizer._clip_gradients = no_clip_before_sum
    optimizer._backend_update_step = update_step_with_clip_after_sum
    return optimizer
