// LayerNorm over the last axis as two TensorFlow CPU kernels, one pass over memory each:
// the forward pass (y, and each row's mean and 1/std for the backward pass) and the
// backward pass (dx, dgamma, dbeta). TensorFlow's own ops take about ten passes for each.
// float32 only; keras_vit.LayerNorm computes its statistics in float32 under every policy.
// Built and loaded by keras_vit/native_ops.py; used by keras_vit/tensorflow_kernels.py.

#include <cmath>

#include "common.h"

namespace keras_vit {

REGISTER_OP("KerasVitLayerNorm")
    .Input("x: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Attr("epsilon: float")
    .Output("y: float")
    .Output("mean: float")
    .Output("inv_std: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, rows;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 1, &x));
      TF_RETURN_IF_ERROR(c->Subshape(x, 0, -1, &rows));
      c->set_output(0, x);
      c->set_output(1, rows);
      c->set_output(2, rows);
      return absl::OkStatus();
    })
    .Doc(R"doc(
LayerNorm over the last axis: y = (x - mean) * inv_std * gamma + beta.
x: [..., D]. gamma, beta: [D]. y: [..., D]. mean, inv_std: [...], one value per row.
)doc");

REGISTER_OP("KerasVitLayerNormGrad")
    .Input("dy: float")
    .Input("x: float")
    .Input("mean: float")
    .Input("inv_std: float")
    .Input("gamma: float")
    .Output("dx: float")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(4));
      c->set_output(2, c->input(4));
      return absl::OkStatus();
    })
    .Doc(R"doc(
The gradient of KerasVitLayerNorm, from its input x and the mean and inv_std it returned.
dx = inv_std * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gamma and
xhat = (x - mean) * inv_std; dgamma = sum over rows of dy * xhat; dbeta = sum of dy.
)doc");

namespace {

// Rows per block of the backward pass, each summing its own share of dgamma and dbeta
// (`SumBlocksInOrder`).
constexpr int64_t kRowsPerBlock = 64;

// Whether `parameter` is [D] for x [..., D]; if not, fails the op with an error naming both.
bool MatchesWidth(OpKernelContext* context, const Tensor& x, const Tensor& parameter, const char* name) {
  if (x.dims() >= 1 && parameter.dims() == 1 && parameter.dim_size(0) == x.dim_size(x.dims() - 1)) return true;
  context->CtxFailure(InvalidArgument("keras_vit LayerNorm: x [..., D] needs ", name, " of shape [D]; got x ",
                                      x.shape().DebugString(), " and ", name, " ", parameter.shape().DebugString()));
  return false;
}

int64_t Rows(const Tensor& x) {
  const int64_t width = x.dim_size(x.dims() - 1);
  return width == 0 ? 0 : x.NumElements() / width;
}

}  // namespace

class LayerNormOp : public OpKernel {
 public:
  explicit LayerNormOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& gamma = context->input(1);
    const Tensor& beta = context->input(2);
    if (!MatchesWidth(context, x, gamma, "gamma") || !MatchesWidth(context, x, beta, "beta")) return;
    const int64_t rows = Rows(x);
    TensorShape rows_shape = x.shape();
    rows_shape.RemoveLastDims(1);
    Tensor *y, *mean, *inv_std;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(context, context->allocate_output(1, rows_shape, &mean));
    OP_REQUIRES_OK(context, context->allocate_output(2, rows_shape, &inv_std));
    const int64_t width = gamma.dim_size(0);
    const float* x_data = x.flat<float>().data();
    const float* gamma_data = gamma.flat<float>().data();
    const float* beta_data = beta.flat<float>().data();
    float* y_data = y->flat<float>().data();
    float* mean_data = mean->flat<float>().data();
    float* inv_std_data = inv_std->flat<float>().data();
    const float epsilon = epsilon_;
    ParallelFor(context, rows, 8 * width, [=](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const float* x_row = x_data + row * width;
        float* y_row = y_data + row * width;
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < width; ++i) sum += x_row[i];
        const float row_mean = sum / width;
        float squares = 0.f;  // centred first, as keras_vit.layers._layer_norm
#pragma omp simd reduction(+ : squares)
        for (int64_t i = 0; i < width; ++i) squares += (x_row[i] - row_mean) * (x_row[i] - row_mean);
        const float row_inv_std = 1.f / std::sqrt(squares / width + epsilon);
#pragma omp simd
        for (int64_t i = 0; i < width; ++i)
          y_row[i] = (x_row[i] - row_mean) * row_inv_std * gamma_data[i] + beta_data[i];
        mean_data[row] = row_mean;
        inv_std_data[row] = row_inv_std;
      }
    });
  }

 private:
  float epsilon_;
};

class LayerNormGradOp : public OpKernel {
 public:
  explicit LayerNormGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& dy = context->input(0);
    const Tensor& x = context->input(1);
    const Tensor& mean = context->input(2);
    const Tensor& inv_std = context->input(3);
    const Tensor& gamma = context->input(4);
    if (!MatchesWidth(context, x, gamma, "gamma")) return;
    const int64_t rows = Rows(x);
    OP_REQUIRES(context, dy.shape() == x.shape() && mean.NumElements() == rows && inv_std.NumElements() == rows,
                InvalidArgument("KerasVitLayerNormGrad: dy ", dy.shape().DebugString(), ", x ",
                                x.shape().DebugString(), ", mean ", mean.shape().DebugString(), " and inv_std ",
                                inv_std.shape().DebugString(), " do not match"));
    const int64_t width = gamma.dim_size(0);
    Tensor *dx, *dgamma, *dbeta;
    OP_REQUIRES_OK(context, context->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(context, context->allocate_output(1, gamma.shape(), &dgamma));
    OP_REQUIRES_OK(context, context->allocate_output(2, gamma.shape(), &dbeta));
    const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    Tensor partial;  // [blocks, 2, D]: each block's share of dgamma, then of dbeta
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT, TensorShape({blocks, 2, width}), &partial));
    const float* dy_data = dy.flat<float>().data();
    const float* x_data = x.flat<float>().data();
    const float* mean_data = mean.flat<float>().data();
    const float* inv_std_data = inv_std.flat<float>().data();
    const float* gamma_data = gamma.flat<float>().data();
    float* dx_data = dx->flat<float>().data();
    float* partial_data = partial.flat<float>().data();
    ParallelFor(context, blocks, 16 * width * kRowsPerBlock, [=](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        float* block_dgamma = partial_data + 2 * block * width;
        float* block_dbeta = block_dgamma + width;
        std::fill(block_dgamma, block_dgamma + 2 * width, 0.f);
        const int64_t last = std::min(rows, (block + 1) * kRowsPerBlock);
        for (int64_t row = block * kRowsPerBlock; row < last; ++row) {
          const float* x_row = x_data + row * width;
          const float* dy_row = dy_data + row * width;
          float* dx_row = dx_data + row * width;
          const float row_mean = mean_data[row], row_inv_std = inv_std_data[row];
          float mean_g = 0.f, mean_g_xhat = 0.f;
#pragma omp simd reduction(+ : mean_g, mean_g_xhat)
          for (int64_t i = 0; i < width; ++i) {
            const float xhat = (x_row[i] - row_mean) * row_inv_std;
            const float g = dy_row[i] * gamma_data[i];
            mean_g += g;
            mean_g_xhat += g * xhat;
            block_dgamma[i] += dy_row[i] * xhat;
            block_dbeta[i] += dy_row[i];
          }
          mean_g /= width;
          mean_g_xhat /= width;
#pragma omp simd
          for (int64_t i = 0; i < width; ++i) {
            const float xhat = (x_row[i] - row_mean) * row_inv_std;
            dx_row[i] = row_inv_std * (dy_row[i] * gamma_data[i] - mean_g - xhat * mean_g_xhat);
          }
        }
      }
    });
    SumBlocksInOrder(partial_data, blocks, 2 * width, 0, width, dgamma->flat<float>().data());
    SumBlocksInOrder(partial_data, blocks, 2 * width, width, width, dbeta->flat<float>().data());
  }
};

REGISTER_KERNEL_BUILDER(Name("KerasVitLayerNorm").Device(tensorflow::DEVICE_CPU), LayerNormOp);
REGISTER_KERNEL_BUILDER(Name("KerasVitLayerNormGrad").Device(tensorflow::DEVICE_CPU), LayerNormGradOp);

}  // namespace keras_vit
