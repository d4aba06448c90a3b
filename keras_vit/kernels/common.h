// What keras_vit's kernels share: TensorFlow's names, running units of work on TensorFlow's
// CPU threads, and adding per-block partial sums in a fixed order.

#ifndef KERAS_VIT_KERNELS_COMMON_H_
#define KERAS_VIT_KERNELS_COMMON_H_

#include <algorithm>
#include <functional>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace keras_vit {

using ::tensorflow::OpInputList;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// Runs work(begin, end) over [0, units) on TensorFlow's CPU threads; cost_per_unit (about
// the cycles of one unit) decides how finely the units are split.
inline void ParallelFor(OpKernelContext* context, int64_t units, int64_t cost_per_unit,
                        const std::function<void(int64_t, int64_t)>& work) {
  auto* pool = context->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(units, tsl::thread::ThreadPool::SchedulingParams::Adaptive(cost_per_unit), work);
}

// Whether qkv [B, T, 3 * num_heads * head_dim] (a fused q/k/v projection) and bias
// [3 * num_heads * head_dim] fit each other; if not, fails `context` with an error naming `op`.
inline bool CheckFusedProjection(OpKernelContext* context, const char* op, const Tensor& qkv, const Tensor& bias,
                                 int num_heads) {
  if (qkv.dims() != 3 || qkv.dim_size(2) % (3 * num_heads) != 0) {
    context->CtxFailure(InvalidArgument(op, ": qkv must be [B, T, 3 * num_heads * head_dim] with num_heads ",
                                        num_heads, "; got ", qkv.shape().DebugString()));
    return false;
  }
  if (bias.dims() != 1 || bias.dim_size(0) != qkv.dim_size(2)) {
    context->CtxFailure(InvalidArgument(op, ": bias must be [", qkv.dim_size(2), "]; got ", bias.shape().DebugString()));
    return false;
  }
  return true;
}

// One row of a softmax's gradient: dx = p * (dy - sum(dy * p)), n values; dx may be dy.
inline void SoftmaxGradRow(const float* p, const float* dy, float* dx, int64_t n) {
  float dot = 0.f;
#pragma omp simd reduction(+ : dot)
  for (int64_t i = 0; i < n; ++i) dot += dy[i] * p[i];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = p[i] * (dy[i] - dot);
}

// out[i] = the sum over blocks b of partial[b * stride + offset + i], i < count, added block
// by block in order. A gradient reduced this way (each block of rows summing its own share)
// does not depend on how the threads split the blocks.
inline void SumBlocksInOrder(const float* partial, int64_t blocks, int64_t stride, int64_t offset, int64_t count,
                             float* out) {
  std::fill(out, out + count, 0.f);
  for (int64_t block = 0; block < blocks; ++block) {
    const float* share = partial + block * stride + offset;
    for (int64_t i = 0; i < count; ++i) out[i] += share[i];
  }
}

}  // namespace keras_vit

#endif  // KERAS_VIT_KERNELS_COMMON_H_
