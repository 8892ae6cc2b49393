// The CPU backend: the fp32 reference every other backend is tested against,
// and its fp64 twin used only by the finite-difference gradient checks.
// Each op's kernel lives in its own file (layernorm.cpp, attention.cpp, ...);
// this class only adapts them to the type-erased Backend interface.
#pragma once

#include "ops/backend.h"

namespace lsgpt {

template <typename T>
class CpuBackend final : public Backend {
 public:
  std::string name() const override;
  DType dtype() const override;
  DType acc_dtype() const override { return dtype(); }

  void* alloc(size_t bytes) override;
  void dealloc(void* ptr) noexcept override;
  void zero(void* dst, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void upload(void* dst, const void* host_src, size_t bytes) override;
  void download(void* host_dst, const void* src, size_t bytes) override;
  void upload_f32(void* dst, DType dtype, const float* host_src, size_t n) override;
  void download_f32(float* host_dst, const void* src, DType dtype, size_t n) override;
  void sync() override {}
  size_t free_memory_bytes() const override;

  void embedding_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe,
                         int B, int T_, int C, int pos0) override;
  void embedding_backward(void* dwte, void* dwpe, const void* dout, const int32_t* tokens,
                          int B, int T_, int C) override;
  void layernorm_forward(void* out, void* mean, void* rstd, const void* inp, const void* weight,
                         const void* bias, int N, int C) override;
  void add_layernorm_forward(void* residual, void* out, void* mean, void* rstd, const void* delta,
                             const void* weight, const void* bias, int N, int C) override;
  void layernorm_backward(void* dinp, void* dweight, void* dbias, void* dinp_colsum,
                          const void* dout, const void* inp, const void* weight,
                          const void* mean, const void* rstd, int N, int C) override;
  void matmul_forward(void* out, void* pre_gelu, const void* inp, const void* weight,
                      const void* bias, int N, int C, int OC) override;
  void matmul_backward(void* dinp, void* dweight, void* dbias, void* dout, const void* inp,
                       const void* weight, const void* pre_gelu, const void* inp_pre_gelu, int N,
                       int C, int OC) override;
  void gelu_forward(void* out, const void* inp, size_t n) override;
  void gelu_backward(void* dinp, const void* inp, const void* dout, size_t n) override;
  void residual_forward(void* out, const void* a, const void* b, size_t n) override;
  void add_inplace(void* dst, const void* src, size_t n) override;
  void attention_forward(void* out, void* lse, void* max_logit, void* kbar, const void* qkv,
                         const AttentionSpec& spec) override;
  void attention_backward(void* dqkv, void* dqkv_colsum, const void* dout, const void* qkv,
                          const void* out, const void* lse, const void* kbar,
                          const AttentionSpec& spec) override;
  void attention_decode(void* out, void* k_local, void* v_local, void* k_global,
                        void* v_global, const void* qkv, const DecodeSpec& spec) override;
  void kv_cache_write(void* k_local, void* v_local, void* k_global, void* v_global,
                      const void* qkv, int T_, int cache_row, const DecodeSpec& spec) override;
  void embedding_decode(void* out, const int32_t* tokens, const int32_t* positions,
                        const void* wte, const void* wpe, int B, int C) override;
  void sample_tokens(int32_t* tokens, const void* logits, SampleParams* params, int B, int V,
                     int Vp, int32_t* advance, int32_t* next_input) override;
  void softmax_cross_entropy(void* losses, void* logits, const int32_t* targets, int N, int V,
                             int Vp, double dloss, bool compute_grad, double z_coef,
                             void* lse) override;
  void qk_norm_forward(void* out, void* rstd, const void* qkv, const void* q_gain,
                       const void* k_gain, int N, int n_head, int D, double eps) override;
  void qk_norm_backward(void* dqkv, void* dq_gain, void* dk_gain, const void* dout,
                        const void* qkv, const void* q_gain, const void* k_gain,
                        const void* rstd, int N, int n_head, int D) override;
  double sum_squares(const void* x, size_t n) override;
  void adamw_update(void* param, void* master, const void* grad, void* m, void* v, size_t n,
                    const AdamWSettings& s) override;
};

extern template class CpuBackend<float>;
extern template class CpuBackend<double>;

}  // namespace lsgpt
