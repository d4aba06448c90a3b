// Multi-head self-attention from the fused q/k/v projection to the context, one (example,
// head) at a time in the core's caches:
//   forward:  qkv [B, T, 3 * H * d] (the projection without its bias) and bias [3 * H * d]
//             -> context [B, T, H * d] (heads side by side, as the output projection
//             takes them) and the attention probabilities [B, H, T, T], which the
//             backward pass reads;
//   backward: dcontext -> dqkv [B, T, 3 * H * d] and dbias [3 * H * d].
// With q = (qkv_q + bias_q) * query_scale, k and v likewise without the scale:
//   p = softmax(q k^T) row by row, context = p v;
//   dv = p^T dc, dp = dc v^T, ds = p * (dp - rowsum(dp * p)), dk = ds^T q, dq = ds k * scale.
// TensorFlow's ops take the bias, a transpose into heads, two batched matmuls, a softmax and
// a transpose back forward, and about twice that backward, each a pass over memory; here the
// products are Eigen's matrix products on [T, d] and [T, T] blocks that stay in L1/L2.
// No dropout on the probabilities: with attention dropout the layer uses the split-heads
// kernel and TensorFlow's products. float32 only. Built and loaded by keras_vit/native_ops.py.

#include "Eigen/Core"
#include "common.h"

namespace keras_vit {

REGISTER_OP("KerasVitAttention")
    .Input("qkv: float")
    .Input("bias: float")
    .Attr("num_heads: int >= 1")
    .Attr("query_scale: float")
    .Output("context: float")
    .Output("probabilities: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle qkv;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &qkv));
      int num_heads;
      TF_RETURN_IF_ERROR(c->GetAttr("num_heads", &num_heads));
      DimensionHandle width;
      TF_RETURN_IF_ERROR(c->Divide(c->Dim(qkv, 2), 3, /*evenly_divisible=*/true, &width));
      c->set_output(0, c->MakeShape({c->Dim(qkv, 0), c->Dim(qkv, 1), width}));
      c->set_output(1, c->MakeShape({c->Dim(qkv, 0), c->MakeDim(num_heads), c->Dim(qkv, 1), c->Dim(qkv, 1)}));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Self-attention of H heads from the fused projection qkv [B, T, 3 * H * d] (q, k, v blocks in
that order, each heads-major) plus bias [3 * H * d], q multiplied by query_scale:
context [B, T, H * d] and probabilities [B, H, T, T].
)doc");

REGISTER_OP("KerasVitAttentionGrad")
    .Input("dcontext: float")
    .Input("qkv: float")
    .Input("bias: float")
    .Input("probabilities: float")
    .Attr("query_scale: float")
    .Output("dqkv: float")
    .Output("dbias: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      return absl::OkStatus();
    })
    .Doc(R"doc(
The gradient of KerasVitAttention's context: dqkv [B, T, 3 * H * d] and dbias [3 * H * d]
from dcontext [B, T, H * d], its inputs and its probabilities.
)doc");

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixMap = Eigen::Map<Matrix>;
using ConstMatrixMap = Eigen::Map<const Matrix>;
// A [T, d] block of a [B, T, width] tensor: rows a width apart.
using StridedMap = Eigen::Map<Matrix, Eigen::Unaligned, Eigen::OuterStride<>>;
using ConstStridedMap = Eigen::Map<const Matrix, Eigen::Unaligned, Eigen::OuterStride<>>;

// The sizes of one call, checked against each other.
struct AttentionShape {
  int64_t batch, tokens, heads, head_dim;
  int64_t width() const { return 3 * heads * head_dim; }
  // Cycles of one (example, head) unit, roughly: its products at about 16 multiply-adds a cycle.
  int64_t cost() const { return 2 * tokens * tokens * head_dim / 16 + 1; }
};

// q, k, v [T, d] of example b and head h, contiguous: bias added, q multiplied by scale.
inline void LoadHeads(const float* qkv, const float* bias, const AttentionShape& s, int64_t b, int64_t h,
                      float scale, Matrix* q, Matrix* k, Matrix* v) {
  Matrix* parts[3] = {q, k, v};
  const float scales[3] = {scale, 1.f, 1.f};
  for (int part = 0; part < 3; ++part) {
    const int64_t column = (part * s.heads + h) * s.head_dim;
    const float* add = bias + column;
    const float factor = scales[part];
    for (int64_t t = 0; t < s.tokens; ++t) {
      const float* in = qkv + (b * s.tokens + t) * s.width() + column;
      float* out = parts[part]->data() + t * s.head_dim;
#pragma omp simd
      for (int64_t i = 0; i < s.head_dim; ++i) out[i] = (in[i] + add[i]) * factor;
    }
  }
}

// Each row of scores [rows, n] -> its softmax, in place. The exp runs once over the whole
// block: row by row, Eigen's vectorised exp spends as long on each short row's tail.
inline void SoftmaxRowsInPlace(float* scores, int64_t rows, int64_t n) {
  for (int64_t row = 0; row < rows; ++row) {
    float* x = scores + row * n;
    float max = x[0];
#pragma omp simd reduction(max : max)
    for (int64_t i = 0; i < n; ++i) max = std::max(max, x[i]);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) x[i] -= max;
  }
  Eigen::Map<Eigen::ArrayXf> all(scores, rows * n);
  all = all.exp();
  for (int64_t row = 0; row < rows; ++row) {
    float* x = scores + row * n;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += x[i];
    const float inverse = 1.f / sum;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) x[i] *= inverse;
  }
}

class AttentionOp : public OpKernel {
 public:
  explicit AttentionOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("num_heads", &num_heads_));
    OP_REQUIRES_OK(context, context->GetAttr("query_scale", &query_scale_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& qkv = context->input(0);
    const Tensor& bias = context->input(1);
    if (!CheckFusedProjection(context, "KerasVitAttention", qkv, bias, num_heads_)) return;
    const AttentionShape s{qkv.dim_size(0), qkv.dim_size(1), num_heads_, qkv.dim_size(2) / (3 * num_heads_)};
    const int64_t dim = s.heads * s.head_dim, tokens = s.tokens;
    Tensor *context_out, *probabilities;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({s.batch, tokens, dim}), &context_out));
    OP_REQUIRES_OK(context,
                   context->allocate_output(1, TensorShape({s.batch, s.heads, tokens, tokens}), &probabilities));
    const float* qkv_data = qkv.flat<float>().data();
    const float* bias_data = bias.flat<float>().data();
    float* context_data = context_out->flat<float>().data();
    float* probabilities_data = probabilities->flat<float>().data();
    const float scale = query_scale_;
    ParallelFor(context, s.batch * s.heads, s.cost(), [=](int64_t begin, int64_t end) {
      Matrix q(tokens, s.head_dim), k(tokens, s.head_dim), v(tokens, s.head_dim);
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t b = unit / s.heads, h = unit % s.heads;
        LoadHeads(qkv_data, bias_data, s, b, h, scale, &q, &k, &v);
        MatrixMap p(probabilities_data + unit * tokens * tokens, tokens, tokens);
        p.noalias() = q * k.transpose();
        SoftmaxRowsInPlace(p.data(), tokens, tokens);
        StridedMap out(context_data + b * tokens * dim + h * s.head_dim, tokens, s.head_dim,
                       Eigen::OuterStride<>(dim));
        out.noalias() = p * v;
      }
    });
  }

 private:
  int num_heads_;
  float query_scale_;
};

class AttentionGradOp : public OpKernel {
 public:
  explicit AttentionGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("query_scale", &query_scale_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& dcontext = context->input(0);
    const Tensor& qkv = context->input(1);
    const Tensor& bias = context->input(2);
    const Tensor& probabilities = context->input(3);
    OP_REQUIRES(context, qkv.dims() == 3 && probabilities.dims() == 4 && probabilities.dim_size(1) > 0,
                InvalidArgument("KerasVitAttentionGrad: qkv must be [B, T, 3 * H * d] and probabilities "
                                "[B, H, T, T]; got ", qkv.shape().DebugString(), " and ",
                                probabilities.shape().DebugString()));
    const int64_t heads = probabilities.dim_size(1);
    const AttentionShape s{qkv.dim_size(0), qkv.dim_size(1), heads, qkv.dim_size(2) / (3 * heads)};
    const int64_t dim = s.heads * s.head_dim, tokens = s.tokens;
    OP_REQUIRES(context,
                qkv.dim_size(2) == s.width() &&
                    probabilities.shape() == TensorShape({s.batch, heads, tokens, tokens}) &&
                    dcontext.shape() == TensorShape({s.batch, tokens, dim}) &&
                    bias.shape() == TensorShape({s.width()}),
                InvalidArgument("KerasVitAttentionGrad: dcontext ", dcontext.shape().DebugString(), ", qkv ",
                                qkv.shape().DebugString(), ", bias ", bias.shape().DebugString(),
                                " and probabilities ", probabilities.shape().DebugString(),
                                " do not fit [B, T, H * d], [B, T, 3 * H * d], [3 * H * d], [B, H, T, T]"));
    Tensor *dqkv, *dbias;
    OP_REQUIRES_OK(context, context->allocate_output(0, qkv.shape(), &dqkv));
    OP_REQUIRES_OK(context, context->allocate_output(1, bias.shape(), &dbias));
    Tensor partial;  // [B, 3 * H * d]: each example's share of dbias
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT, TensorShape({s.batch, s.width()}), &partial));
    const float* dcontext_data = dcontext.flat<float>().data();
    const float* qkv_data = qkv.flat<float>().data();
    const float* bias_data = bias.flat<float>().data();
    const float* probabilities_data = probabilities.flat<float>().data();
    float* dqkv_data = dqkv->flat<float>().data();
    float* partial_data = partial.flat<float>().data();
    const float scale = query_scale_;
    ParallelFor(context, s.batch * s.heads, 2 * s.cost(), [=](int64_t begin, int64_t end) {
      Matrix q(tokens, s.head_dim), k(tokens, s.head_dim), v(tokens, s.head_dim), ds(tokens, tokens);
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t b = unit / s.heads, h = unit % s.heads;
        LoadHeads(qkv_data, bias_data, s, b, h, scale, &q, &k, &v);
        ConstMatrixMap p(probabilities_data + unit * tokens * tokens, tokens, tokens);
        ConstStridedMap dc(dcontext_data + b * tokens * dim + h * s.head_dim, tokens, s.head_dim,
                           Eigen::OuterStride<>(dim));
        float* dqkv_example = dqkv_data + b * tokens * s.width();
        auto head_block = [&](int part) {
          return StridedMap(dqkv_example + (part * s.heads + h) * s.head_dim, tokens, s.head_dim,
                            Eigen::OuterStride<>(s.width()));
        };
        StridedMap dq = head_block(0), dk = head_block(1), dv = head_block(2);
        dv.noalias() = p.transpose() * dc;
        ds.noalias() = dc * v.transpose();
        for (int64_t row = 0; row < tokens; ++row) {  // ds = p * (dp - rowsum(dp * p)), in place
          float* grad = ds.data() + row * tokens;
          SoftmaxGradRow(p.data() + row * tokens, grad, grad, tokens);
        }
        dk.noalias() = ds.transpose() * q;  // q carries the scale already
        dq.noalias() = ds * (k * scale);  // Eigen takes the scale into the product
        float* example_dbias = partial_data + b * s.width();
        for (int part = 0; part < 3; ++part) {
          StridedMap block = head_block(part);
          Eigen::Map<Eigen::RowVectorXf>(example_dbias + (part * s.heads + h) * s.head_dim, s.head_dim) =
              block.colwise().sum();
        }
      }
    });
    SumBlocksInOrder(partial_data, s.batch, s.width(), 0, s.width(), dbias->flat<float>().data());
  }

 private:
  float query_scale_;
};

REGISTER_KERNEL_BUILDER(Name("KerasVitAttention").Device(tensorflow::DEVICE_CPU), AttentionOp);
REGISTER_KERNEL_BUILDER(Name("KerasVitAttentionGrad").Device(tensorflow::DEVICE_CPU), AttentionGradOp);

}  // namespace keras_vit
