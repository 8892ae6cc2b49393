// AdamW on one tensor: the f32 master weights are updated and the bf16
// working copy is refreshed from them with round-to-nearest (not stochastic
// rounding), so a resumed run reproduces the uninterrupted one bit for bit.
#include <cmath>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_utils.cuh"
#include "ops/cuda/ops.h"

namespace lsgpt::cuda {
namespace {

struct AdamWCoefficients {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  float bias_correction1, bias_correction2;  // 1 - beta^step
};

__global__ void adamw_kernel(bf16* param, float* master, const bf16* grad, float* m, float* v,
                             size_t n, AdamWCoefficients k) {
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = __bfloat162float(grad[i]) * k.grad_scale;
  const float mi = k.beta1 * m[i] + (1.0f - k.beta1) * g;
  const float vi = k.beta2 * v[i] + (1.0f - k.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  const float m_hat = mi / k.bias_correction1;
  const float v_hat = vi / k.bias_correction2;
  const float w = master[i];
  const float updated = w - k.lr * (m_hat / (sqrtf(v_hat) + k.eps) + k.weight_decay * w);
  master[i] = updated;
  param[i] = __float2bfloat16(updated);
}

}  // namespace

void adamw_update(CudaContext& ctx, bf16* param, float* master, const bf16* grad, float* m,
                  float* v, size_t n, const AdamWSettings& s) {
  LSGPT_CHECK(master != nullptr, "the CUDA backend updates f32 master weights; master is null");
  LSGPT_CHECK(s.step >= 1, "AdamW step is 1-based");
  if (n == 0) return;
  AdamWCoefficients k;
  k.lr = float(s.lr), k.beta1 = float(s.beta1), k.beta2 = float(s.beta2), k.eps = float(s.eps);
  k.weight_decay = float(s.weight_decay), k.grad_scale = float(s.grad_scale);
  k.bias_correction1 = float(1.0 - std::pow(s.beta1, double(s.step)));
  k.bias_correction2 = float(1.0 - std::pow(s.beta2, double(s.step)));
  adamw_kernel<<<ceil_div((long long)n, 256), 256, 0, ctx.stream()>>>(param, master, grad, m, v,
                                                                       n, k);
  CUDA_CHECK_LAUNCH();
}

}  // namespace lsgpt::cuda
