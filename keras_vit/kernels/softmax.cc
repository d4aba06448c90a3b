// The gradient of a softmax over the last axis, in one pass over memory:
// dx = p * (dy - sum(dy * p)) per row, where TensorFlow's registered gradient takes four
// (multiply, sum, subtract, multiply). float32 only: keras_vit's attention takes its softmax
// in float32 under every policy. Built and loaded by keras_vit/native_ops.py.

#include "common.h"

namespace keras_vit {

REGISTER_OP("KerasVitSoftmaxGrad")
    .Input("probabilities: float")
    .Input("dy: float")
    .Output("dx: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    })
    .Doc(R"doc(
The gradient of p = softmax(x) over the last axis: dx = p * (dy - sum(dy * p, last axis)).
probabilities, dy, dx: [..., N].
)doc");

class SoftmaxGradOp : public OpKernel {
 public:
  explicit SoftmaxGradOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& probabilities = context->input(0);
    const Tensor& dy = context->input(1);
    OP_REQUIRES(context, probabilities.dims() >= 1 && probabilities.shape() == dy.shape(),
                InvalidArgument("KerasVitSoftmaxGrad: probabilities ", probabilities.shape().DebugString(),
                                " and dy ", dy.shape().DebugString(), " must have one shape of rank >= 1"));
    Tensor* dx;
    OP_REQUIRES_OK(context, context->allocate_output(0, dy.shape(), &dx));
    const int64_t width = dy.dim_size(dy.dims() - 1);
    const int64_t rows = width == 0 ? 0 : dy.NumElements() / width;
    const float* p_data = probabilities.flat<float>().data();
    const float* dy_data = dy.flat<float>().data();
    float* dx_data = dx->flat<float>().data();
    ParallelFor(context, rows, 6 * width, [=](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        SoftmaxGradRow(p_data + row * width, dy_data + row * width, dx_data + row * width, width);
      }
    });
  }
};

REGISTER_KERNEL_BUILDER(Name("KerasVitSoftmaxGrad").Device(tensorflow::DEVICE_CPU), SoftmaxGradOp);

}  // namespace keras_vit
