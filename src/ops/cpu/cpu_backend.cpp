#include "ops/cpu/cpu_backend.h"

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <string>

#include "core/error.h"
#include "ops/cpu/adamw.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/classifier.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/gelu.h"
#include "ops/cpu/layernorm.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/qk_norm.h"
#include "ops/cpu/residual.h"
#include "ops/cpu/sampling.h"

namespace lsgpt {
namespace {

template <typename T>
T* typed(void* p) { return static_cast<T*>(p); }
template <typename T>
const T* typed(const void* p) { return static_cast<const T*>(p); }

template <typename Src, typename Dst>
void convert(Dst* dst, const Src* src, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = Dst(src[i]);
}

}  // namespace

template <typename T>
std::string CpuBackend<T>::name() const { return sizeof(T) == 8 ? "cpu64" : "cpu"; }

template <typename T>
DType CpuBackend<T>::dtype() const { return sizeof(T) == 8 ? DType::f64 : DType::f32; }

template <typename T>
void* CpuBackend<T>::alloc(size_t bytes) {
  // 64-byte alignment keeps BLAS and vectorised loops on their fast paths.
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!p) fail("out of host memory allocating ", bytes, " bytes");
  return p;
}

// MemAvailable counts reclaimable page cache too, unlike free pages.
template <typename T>
size_t CpuBackend<T>::free_memory_bytes() const {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  size_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

template <typename T>
void CpuBackend<T>::dealloc(void* ptr) noexcept { std::free(ptr); }

template <typename T>
void CpuBackend<T>::zero(void* dst, size_t bytes) { std::memset(dst, 0, bytes); }

template <typename T>
void CpuBackend<T>::copy(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memmove(dst, src, bytes);
}

template <typename T>
void CpuBackend<T>::upload(void* dst, const void* host_src, size_t bytes) {
  copy(dst, host_src, bytes);
}

template <typename T>
void CpuBackend<T>::download(void* host_dst, const void* src, size_t bytes) {
  copy(host_dst, src, bytes);
}

template <typename T>
void CpuBackend<T>::upload_f32(void* dst, DType dtype, const float* host_src, size_t n) {
  switch (dtype) {
    case DType::f32: convert(typed<float>(dst), host_src, n); return;
    case DType::f64: convert(typed<double>(dst), host_src, n); return;
    default: fail("cpu backend: cannot upload f32 into ", dtype_name(dtype));
  }
}

template <typename T>
void CpuBackend<T>::download_f32(float* host_dst, const void* src, DType dtype, size_t n) {
  switch (dtype) {
    case DType::f32: convert(host_dst, typed<float>(src), n); return;
    case DType::f64: convert(host_dst, typed<double>(src), n); return;
    default: fail("cpu backend: cannot download ", dtype_name(dtype), " as f32");
  }
}

template <typename T>
void CpuBackend<T>::embedding_forward(void* out, const int32_t* tokens, const void* wte,
                                      const void* wpe, int B, int T_, int C, int pos0) {
  cpu::embedding_forward(typed<T>(out), tokens, typed<T>(wte), typed<T>(wpe), B, T_, C, pos0);
}

template <typename T>
void CpuBackend<T>::embedding_backward(void* dwte, void* dwpe, const void* dout,
                                       const int32_t* tokens, int B, int T_, int C) {
  cpu::embedding_backward(typed<T>(dwte), typed<T>(dwpe), typed<T>(dout), tokens, B, T_, C);
}

template <typename T>
void CpuBackend<T>::layernorm_forward(void* out, void* mean, void* rstd, const void* inp,
                                      const void* weight, const void* bias, int N, int C) {
  cpu::layernorm_forward(typed<T>(out), typed<T>(mean), typed<T>(rstd), typed<T>(inp),
                         typed<T>(weight), typed<T>(bias), N, C);
}

template <typename T>
void CpuBackend<T>::layernorm_backward(void* dinp, void* dweight, void* dbias, void* dinp_colsum,
                                       const void* dout, const void* inp, const void* weight,
                                       const void* mean, const void* rstd, int N, int C) {
  cpu::layernorm_backward(typed<T>(dinp), typed<T>(dweight), typed<T>(dbias),
                          typed<T>(dinp_colsum), typed<T>(dout), typed<T>(inp), typed<T>(weight),
                          typed<T>(mean), typed<T>(rstd), N, C);
}

template <typename T>
void CpuBackend<T>::matmul_forward(void* out, void* pre_gelu, const void* inp,
                                   const void* weight, const void* bias, int N, int C, int OC) {
  cpu::matmul_forward(typed<T>(out), typed<T>(pre_gelu), typed<T>(inp), typed<T>(weight),
                      typed<T>(bias), N, C, OC);
}

template <typename T>
void CpuBackend<T>::matmul_backward(void* dinp, void* dweight, void* dbias, void* dout,
                                    const void* inp, const void* weight, const void* pre_gelu,
                                    const void* inp_pre_gelu, int N, int C, int OC) {
  cpu::matmul_backward(typed<T>(dinp), typed<T>(dweight), typed<T>(dbias), typed<T>(dout),
                       typed<T>(inp), typed<T>(weight), typed<T>(pre_gelu),
                       typed<T>(inp_pre_gelu), N, C, OC);
}

template <typename T>
void CpuBackend<T>::gelu_forward(void* out, const void* inp, size_t n) {
  cpu::gelu_forward(typed<T>(out), typed<T>(inp), n);
}

template <typename T>
void CpuBackend<T>::gelu_backward(void* dinp, const void* inp, const void* dout, size_t n) {
  cpu::gelu_backward(typed<T>(dinp), typed<T>(inp), typed<T>(dout), n);
}

template <typename T>
void CpuBackend<T>::residual_forward(void* out, const void* a, const void* b, size_t n) {
  cpu::residual_forward(typed<T>(out), typed<T>(a), typed<T>(b), n);
}

template <typename T>
void CpuBackend<T>::add_inplace(void* dst, const void* src, size_t n) {
  cpu::add_inplace(typed<T>(dst), typed<T>(src), n);
}

template <typename T>
void CpuBackend<T>::attention_forward(void* out, void* lse, void* max_logit, void* kbar,
                                      const void* qkv, const AttentionSpec& spec) {
  cpu::attention_forward(typed<T>(out), typed<T>(lse), typed<T>(max_logit), typed<T>(kbar),
                         typed<T>(qkv), spec);
}

template <typename T>
void CpuBackend<T>::attention_backward(void* dqkv, void* dqkv_colsum, const void* dout,
                                       const void* qkv, const void* out, const void* lse,
                                       const void* kbar, const AttentionSpec& spec) {
  cpu::attention_backward(typed<T>(dqkv), typed<T>(dout), typed<T>(qkv), typed<T>(out),
                          typed<T>(lse), typed<T>(kbar), spec);
  if (dqkv_colsum)
    cpu::column_sum_accumulate(typed<T>(dqkv_colsum), typed<T>(dqkv), spec.B * spec.T,
                               3 * spec.C());
}

template <typename T>
void CpuBackend<T>::attention_decode(void* out, void* k_local, void* v_local, void* k_global,
                                     void* v_global, const void* qkv, const DecodeSpec& spec) {
  cpu::attention_decode(typed<T>(out), typed<T>(k_local), typed<T>(v_local), typed<T>(k_global),
                        typed<T>(v_global), typed<T>(qkv), spec);
}

template <typename T>
void CpuBackend<T>::add_layernorm_forward(void* residual, void* out, void* mean, void* rstd,
                                          const void* delta, const void* weight,
                                          const void* bias, int N, int C) {
  add_inplace(residual, delta, size_t(N) * C);
  layernorm_forward(out, mean, rstd, residual, weight, bias, N, C);
}

template <typename T>
void CpuBackend<T>::kv_cache_write(void* k_local, void* v_local, void* k_global, void* v_global,
                                   const void* qkv, int T_, int cache_row,
                                   const DecodeSpec& spec) {
  cpu::kv_cache_write(typed<T>(k_local), typed<T>(v_local), typed<T>(k_global),
                      typed<T>(v_global), typed<T>(qkv), T_, cache_row, spec);
}

template <typename T>
void CpuBackend<T>::embedding_decode(void* out, const int32_t* tokens, const int32_t* positions,
                                     const void* wte, const void* wpe, int B, int C) {
  cpu::embedding_decode(typed<T>(out), tokens, positions, typed<T>(wte), typed<T>(wpe), B, C);
}

template <typename T>
void CpuBackend<T>::sample_tokens(int32_t* tokens, const void* logits, SampleParams* params,
                                  int B, int V, int Vp, int32_t* advance, int32_t* next_input) {
  cpu::sample_tokens(tokens, typed<T>(logits), params, B, V, Vp, advance, next_input);
}

template <typename T>
void CpuBackend<T>::softmax_cross_entropy(void* losses, void* logits, const int32_t* targets,
                                          int N, int V, int Vp, double dloss,
                                          bool compute_grad, double z_coef, void* lse) {
  cpu::softmax_cross_entropy(typed<T>(losses), typed<T>(logits), targets, N, V, Vp, dloss,
                             compute_grad, z_coef, typed<T>(lse));
}

template <typename T>
void CpuBackend<T>::qk_norm_forward(void* out, void* rstd, const void* qkv, const void* q_gain,
                                    const void* k_gain, int N, int n_head, int D, double eps) {
  cpu::qk_norm_forward(typed<T>(out), typed<T>(rstd), typed<T>(qkv), typed<T>(q_gain),
                       typed<T>(k_gain), N, n_head, D, eps);
}

template <typename T>
void CpuBackend<T>::qk_norm_backward(void* dqkv, void* dq_gain, void* dk_gain, const void* dout,
                                     const void* qkv, const void* q_gain, const void* k_gain,
                                     const void* rstd, int N, int n_head, int D) {
  cpu::qk_norm_backward(typed<T>(dqkv), typed<T>(dq_gain), typed<T>(dk_gain), typed<T>(dout),
                        typed<T>(qkv), typed<T>(q_gain), typed<T>(k_gain), typed<T>(rstd), N,
                        n_head, D);
}

template <typename T>
double CpuBackend<T>::sum_squares(const void* x, size_t n) {
  return cpu::sum_squares(typed<T>(x), n);
}

template <typename T>
void CpuBackend<T>::adamw_update(void* param, void* master, const void* grad, void* m, void* v,
                                 size_t n, const AdamWSettings& s) {
  LSGPT_CHECK(master == nullptr, "the CPU backend keeps no master weights");
  cpu::adamw_update(typed<T>(param), typed<T>(grad), typed<T>(m), typed<T>(v), n, s);
}

template class CpuBackend<float>;
template class CpuBackend<double>;

}  // namespace lsgpt
