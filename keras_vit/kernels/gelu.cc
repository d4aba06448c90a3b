// The MLP's bias and exact GELU, one pass over memory each way:
//   forward:  y = gelu(h + bias), with h [..., N] the first MLP matmul without its bias;
//   backward: dh = dy * gelu'(h + bias) and dbias = the sum of dh over rows,
// gelu(x) = x * Phi(x) and gelu'(x) = Phi(x) + x * phi(x). TensorFlow takes a bias add, about
// five element-wise ops and a bias-gradient reduction (about ten ops without XLA). erf and
// exp are Eigen's vectorised ones. float32 only. Built and loaded by keras_vit/native_ops.py.

#include "common.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace keras_vit {

REGISTER_OP("KerasVitBiasGelu")
    .Input("h: float")
    .Input("bias: float")
    .Output("y: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    })
    .Doc("y = gelu(h + bias), the exact GELU x * Phi(x). h: [..., N]; bias: [N].");

REGISTER_OP("KerasVitBiasGeluGrad")
    .Input("dy: float")
    .Input("h: float")
    .Input("bias: float")
    .Output("dh: float")
    .Output("dbias: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      return absl::OkStatus();
    })
    .Doc("The gradient of KerasVitBiasGelu: dh = dy * gelu'(h + bias), dbias = sum of dh over rows.");

namespace {

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
// Rows per block of the backward pass, each summing its own share of dbias (`SumBlocksInOrder`).
constexpr int64_t kRowsPerBlock = 32;

using Row = Eigen::TensorMap<Eigen::Tensor<float, 1, Eigen::RowMajor>>;
using ConstRow = Eigen::TensorMap<const Eigen::Tensor<float, 1, Eigen::RowMajor>>;
namespace ei = Eigen::internal;
using Packet = ei::packet_traits<float>::type;  // this CPU's widest (16 floats with AVX-512)
constexpr int64_t kLanes = ei::unpacket_traits<Packet>::size;

// gelu'(x) = Phi(x) + x * phi(x), for a packet or a float: Eigen's vectorised erf and exp.
template <typename T>
inline T GeluGrad(const T& x) {
  const T cdf = ei::pmadd(ei::perf(ei::pmul(x, ei::pset1<T>(kInvSqrt2))), ei::pset1<T>(0.5f), ei::pset1<T>(0.5f));
  const T pdf = ei::pmul(ei::pexp(ei::pmul(ei::pmul(x, x), ei::pset1<T>(-0.5f))), ei::pset1<T>(kInvSqrt2Pi));
  return ei::pmadd(x, pdf, cdf);
}

// One row of the backward pass: dh = dy * gelu'(h + bias), and dh added to dbias. Written
// with Eigen's packets: as a Tensor expression (x used three times) it took 1.5x as long.
inline void BiasGeluGradRow(const float* h, const float* bias, const float* dy, float* dh, float* dbias,
                            int64_t width) {
  int64_t i = 0;
  for (; i + kLanes <= width; i += kLanes) {
    const Packet x = ei::padd(ei::ploadu<Packet>(h + i), ei::ploadu<Packet>(bias + i));
    const Packet grad = ei::pmul(ei::ploadu<Packet>(dy + i), GeluGrad(x));
    ei::pstoreu(dh + i, grad);
    ei::pstoreu(dbias + i, ei::padd(ei::ploadu<Packet>(dbias + i), grad));
  }
  for (; i < width; ++i) {
    dh[i] = dy[i] * GeluGrad(h[i] + bias[i]);
    dbias[i] += dh[i];
  }
}

bool CheckShapes(OpKernelContext* context, const Tensor& h, const Tensor& bias) {
  if (h.dims() >= 1 && bias.dims() == 1 && bias.dim_size(0) == h.dim_size(h.dims() - 1)) return true;
  context->CtxFailure(InvalidArgument("keras_vit GELU: h [..., N] needs bias [N]; got h ", h.shape().DebugString(),
                                      " and bias ", bias.shape().DebugString()));
  return false;
}

}  // namespace

class BiasGeluOp : public OpKernel {
 public:
  explicit BiasGeluOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& h = context->input(0);
    const Tensor& bias = context->input(1);
    if (!CheckShapes(context, h, bias)) return;
    Tensor* y;
    OP_REQUIRES_OK(context, context->allocate_output(0, h.shape(), &y));
    const int64_t width = bias.dim_size(0), rows = width == 0 ? 0 : h.NumElements() / width;
    const float* h_data = h.flat<float>().data();
    const float* bias_data = bias.flat<float>().data();
    float* y_data = y->flat<float>().data();
    ParallelFor(context, rows, 40 * width, [=](int64_t begin, int64_t end) {
      const ConstRow b(bias_data, width);
      for (int64_t row = begin; row < end; ++row) {
        const auto x = ConstRow(h_data + row * width, width) + b;
        Row(y_data + row * width, width) =
            x * ((x * kInvSqrt2).erf() * 0.5f + 0.5f);
      }
    });
  }
};

class BiasGeluGradOp : public OpKernel {
 public:
  explicit BiasGeluGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& dy = context->input(0);
    const Tensor& h = context->input(1);
    const Tensor& bias = context->input(2);
    if (!CheckShapes(context, h, bias)) return;
    OP_REQUIRES(context, dy.shape() == h.shape(),
                InvalidArgument("KerasVitBiasGeluGrad: dy ", dy.shape().DebugString(), " and h ",
                                h.shape().DebugString(), " must have one shape"));
    Tensor *dh, *dbias;
    OP_REQUIRES_OK(context, context->allocate_output(0, h.shape(), &dh));
    OP_REQUIRES_OK(context, context->allocate_output(1, bias.shape(), &dbias));
    const int64_t width = bias.dim_size(0), rows = width == 0 ? 0 : h.NumElements() / width;
    const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    Tensor partial;  // [blocks, N]: each block's share of dbias
    OP_REQUIRES_OK(context, context->allocate_temp(tensorflow::DT_FLOAT, TensorShape({blocks, width}), &partial));
    const float* dy_data = dy.flat<float>().data();
    const float* h_data = h.flat<float>().data();
    const float* bias_data = bias.flat<float>().data();
    float* dh_data = dh->flat<float>().data();
    float* partial_data = partial.flat<float>().data();
    ParallelFor(context, blocks, 60 * width * kRowsPerBlock, [=](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        float* block_dbias = partial_data + block * width;
        std::fill(block_dbias, block_dbias + width, 0.f);
        const int64_t last = std::min(rows, (block + 1) * kRowsPerBlock);
        for (int64_t row = block * kRowsPerBlock; row < last; ++row) {
          BiasGeluGradRow(h_data + row * width, bias_data, dy_data + row * width, dh_data + row * width,
                          block_dbias, width);
        }
      }
    });
    SumBlocksInOrder(partial_data, blocks, width, 0, width, dbias->flat<float>().data());
  }
};

REGISTER_KERNEL_BUILDER(Name("KerasVitBiasGelu").Device(tensorflow::DEVICE_CPU), BiasGeluOp);
REGISTER_KERNEL_BUILDER(Name("KerasVitBiasGeluGrad").Device(tensorflow::DEVICE_CPU), BiasGeluGradOp);

}  // namespace keras_vit
