// The fused q/k/v projection's output cut into heads, in one pass over memory each way:
//   forward:  qkv [B, T, 3 * H * d] (the projection without its bias) and bias [3 * H * d]
//             -> q, k, v [B, H, T, d], bias added, q multiplied by query_scale;
//   backward: dq, dk, dv [B, H, T, d] -> dqkv [B, T, 3 * H * d] and dbias [3 * H * d].
// TensorFlow's ops take a bias add, a transpose, a split and a multiply forward, and a
// multiply, a concat, a transpose and a bias-gradient reduction backward.
// float32 only. Built and loaded by keras_vit/native_ops.py.

#include "common.h"

namespace keras_vit {

REGISTER_OP("KerasVitSplitHeads")
    .Input("qkv: float")
    .Input("bias: float")
    .Attr("num_heads: int >= 1")
    .Attr("query_scale: float")
    .Output("query: float")
    .Output("key: float")
    .Output("value: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle qkv;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &qkv));
      int num_heads;
      TF_RETURN_IF_ERROR(c->GetAttr("num_heads", &num_heads));
      DimensionHandle head_dim;
      TF_RETURN_IF_ERROR(c->Divide(c->Dim(qkv, 2), 3 * num_heads, /*evenly_divisible=*/true, &head_dim));
      ShapeHandle heads = c->MakeShape({c->Dim(qkv, 0), c->MakeDim(num_heads), c->Dim(qkv, 1), head_dim});
      for (int i = 0; i < 3; ++i) c->set_output(i, heads);
      return absl::OkStatus();
    })
    .Doc(R"doc(
q, k, v [B, H, T, d] from the fused projection qkv [B, T, 3 * H * d] (q, k, v blocks in
that order, each heads-major) plus bias [3 * H * d]; q is multiplied by query_scale.
)doc");

REGISTER_OP("KerasVitSplitHeadsGrad")
    .Input("dquery: float")
    .Input("dkey: float")
    .Input("dvalue: float")
    .Attr("query_scale: float")
    .Output("dqkv: float")
    .Output("dbias: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle heads;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &heads));
      DimensionHandle width;
      TF_RETURN_IF_ERROR(c->Multiply(c->Dim(heads, 1), c->Dim(heads, 3), &width));
      TF_RETURN_IF_ERROR(c->Multiply(width, 3, &width));
      c->set_output(0, c->MakeShape({c->Dim(heads, 0), c->Dim(heads, 2), width}));
      c->set_output(1, c->Vector(width));
      return absl::OkStatus();
    })
    .Doc(R"doc(
The gradient of KerasVitSplitHeads: dqkv [B, T, 3 * H * d] and dbias [3 * H * d] from
dq, dk, dv [B, H, T, d].
)doc");

// Tokens per block of the backward pass, each summing its own share of dbias
// (`SumBlocksInOrder`).
constexpr int64_t kTokensPerBlock = 64;

class SplitHeadsOp : public OpKernel {
 public:
  explicit SplitHeadsOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("num_heads", &num_heads_));
    OP_REQUIRES_OK(context, context->GetAttr("query_scale", &query_scale_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& qkv = context->input(0);
    const Tensor& bias = context->input(1);
    if (!CheckFusedProjection(context, "KerasVitSplitHeads", qkv, bias, num_heads_)) return;
    const int64_t batch = qkv.dim_size(0), tokens = qkv.dim_size(1), width = qkv.dim_size(2);
    const int64_t heads = num_heads_, head_dim = width / (3 * heads);
    const TensorShape shape({batch, heads, tokens, head_dim});
    Tensor* outputs[3];
    for (int part = 0; part < 3; ++part) OP_REQUIRES_OK(context, context->allocate_output(part, shape, &outputs[part]));
    const float* qkv_data = qkv.flat<float>().data();
    const float* bias_data = bias.flat<float>().data();
    float* out_data[3] = {outputs[0]->flat<float>().data(), outputs[1]->flat<float>().data(),
                          outputs[2]->flat<float>().data()};
    const float scales[3] = {query_scale_, 1.f, 1.f};
    // One unit of work: one token's row of qkv, read once, written to its 3 * H places.
    ParallelFor(context, batch * tokens, 2 * width, [=](int64_t begin, int64_t end) {
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t b = unit / tokens, t = unit % tokens;
        const float* row = qkv_data + unit * width;
        for (int part = 0; part < 3; ++part) {
          const float scale = scales[part];
          for (int64_t h = 0; h < heads; ++h) {
            const int64_t column = (part * heads + h) * head_dim;
            const float* in = row + column;
            const float* add = bias_data + column;
            float* out = out_data[part] + ((b * heads + h) * tokens + t) * head_dim;
#pragma omp simd
            for (int64_t i = 0; i < head_dim; ++i) out[i] = (in[i] + add[i]) * scale;
          }
        }
      }
    });
  }

 private:
  int num_heads_;
  float query_scale_;
};

class SplitHeadsGradOp : public OpKernel {
 public:
  explicit SplitHeadsGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("query_scale", &query_scale_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor* grads[3] = {&context->input(0), &context->input(1), &context->input(2)};
    OP_REQUIRES(context,
                grads[0]->dims() == 4 && grads[1]->shape() == grads[0]->shape() && grads[2]->shape() == grads[0]->shape(),
                InvalidArgument("KerasVitSplitHeadsGrad: dq, dk, dv must be [B, H, T, d] of one shape; got ",
                                grads[0]->shape().DebugString(), ", ", grads[1]->shape().DebugString(), ", ",
                                grads[2]->shape().DebugString()));
    const int64_t batch = grads[0]->dim_size(0), heads = grads[0]->dim_size(1);
    const int64_t tokens = grads[0]->dim_size(2), head_dim = grads[0]->dim_size(3);
    const int64_t width = 3 * heads * head_dim, units = batch * tokens;
    Tensor *dqkv, *dbias;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({batch, tokens, width}), &dqkv));
    OP_REQUIRES_OK(context, context->allocate_output(1, TensorShape({width}), &dbias));
    const int64_t blocks = (units + kTokensPerBlock - 1) / kTokensPerBlock;
    Tensor partial;  // [blocks, width]: each block's share of dbias
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT, TensorShape({blocks, width}), &partial));
    const float* grad_data[3] = {grads[0]->flat<float>().data(), grads[1]->flat<float>().data(),
                                 grads[2]->flat<float>().data()};
    const float scales[3] = {query_scale_, 1.f, 1.f};
    float* dqkv_data = dqkv->flat<float>().data();
    float* partial_data = partial.flat<float>().data();
    ParallelFor(context, blocks, 3 * width * kTokensPerBlock, [=](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        float* block_dbias = partial_data + block * width;
        std::fill(block_dbias, block_dbias + width, 0.f);
        const int64_t last = std::min(units, (block + 1) * kTokensPerBlock);
        for (int64_t unit = block * kTokensPerBlock; unit < last; ++unit) {
          const int64_t b = unit / tokens, t = unit % tokens;
          float* row = dqkv_data + unit * width;
          for (int part = 0; part < 3; ++part) {
            const float scale = scales[part];
            for (int64_t h = 0; h < heads; ++h) {
              const int64_t column = (part * heads + h) * head_dim;
              const float* in = grad_data[part] + ((b * heads + h) * tokens + t) * head_dim;
              float* out = row + column;
              float* sum = block_dbias + column;
#pragma omp simd
              for (int64_t i = 0; i < head_dim; ++i) {
                out[i] = in[i] * scale;
                sum[i] += out[i];
              }
            }
          }
        }
      }
    });
    SumBlocksInOrder(partial_data, blocks, width, 0, width, dbias->flat<float>().data());
  }

 private:
  float query_scale_;
};

REGISTER_KERNEL_BUILDER(Name("KerasVitSplitHeads").Device(tensorflow::DEVICE_CPU), SplitHeadsOp);
REGISTER_KERNEL_BUILDER(Name("KerasVitSplitHeadsGrad").Device(tensorflow::DEVICE_CPU), SplitHeadsGradOp);

}  // namespace keras_vit
