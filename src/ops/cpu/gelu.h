// CPU GELU, tanh approximation (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// Semantics in ops/backend.h. The per-element functions are inline here so
// the matmul's fused GELU epilogue computes exactly the same values.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace lsgpt::cpu {

// tanh as the GELU evaluates it. glibc's tanhf is scalar and costs ~30 ns,
// which made the GELU dearer than the matmul in front of it; for float this
// is instead the odd 13/6 rational minimax approximation of Eigen's
// generic_fast_tanh_float (also used by XLA and ONNX Runtime), which the
// compiler vectorises: max abs error 3e-7, within a few float ulp of tanh.
// double keeps std::tanh, so the gradient checks run on the exact function.
template <typename T>
inline T gelu_tanh(T u) {
  return std::tanh(u);
}

template <>
inline float gelu_tanh(float u) {
  // Beyond the clamp tanh rounds to +-1 in float; NaN fails both tests and passes through.
  constexpr float kClamp = 7.90531110763549805f;
  u = u > kClamp ? kClamp : (u < -kClamp ? -kClamp : u);
  const float u2 = u * u;
  float p = -2.76076847742355e-16f;
  p = p * u2 + 2.00018790482477e-13f;
  p = p * u2 - 8.60467152213735e-11f;
  p = p * u2 + 5.12229709037114e-08f;
  p = p * u2 + 1.48572235717979e-05f;
  p = p * u2 + 6.37261928875436e-04f;
  p = p * u2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * u2 + 1.18534705686654e-04f;
  q = q * u2 + 2.26843463243900e-03f;
  q = q * u2 + 4.89352518554385e-03f;
  return u * p / q;
}

template <typename T>
inline T gelu_value(T x) {
  constexpr T kScale = T(0.7978845608028654);  // sqrt(2/pi)
  constexpr T kCube = T(0.044715);
  return T(0.5) * x * (T(1) + gelu_tanh(kScale * (x + kCube * x * x * x)));
}

// d gelu(x) / dx
template <typename T>
inline T gelu_derivative(T x) {
  constexpr T kScale = T(0.7978845608028654);
  constexpr T kCube = T(0.044715);
  const T th = gelu_tanh(kScale * (x + kCube * x * x * x));
  const T dth = (T(1) - th * th) * kScale * (T(1) + T(3) * kCube * x * x);
  return T(0.5) * (T(1) + th) + T(0.5) * x * dth;
}

template <typename T>
void gelu_forward(T* out, const T* inp, size_t n);
template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n);

}  // namespace lsgpt::cpu
