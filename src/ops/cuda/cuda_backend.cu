// The CUDA backend: adapts the kernels of this folder (one .cu per op) to the
// type-erased Backend interface, owns the stream, cuBLASLt handle and scratch
// memory, and turns "no GPU", "GPU too old" and "out of memory" into one clear
// lsgpt::Error each. Host <-> device transfers convert f32 <-> bf16 on the host
// with the same round-to-nearest-even as __float2bfloat16_rn.
#include "ops/cuda/cuda_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/env_switch.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/ops.h"

namespace lsgpt {
namespace cuda {

namespace {
size_t mib_ceil(size_t bytes) { return (bytes + (size_t(1) << 20) - 1) >> 20; }

__global__ void probe_kernel(int* p) {
  if (p) *p = 1;
}

// cudaFree does not say how much it released, so sizes are remembered here.
struct AllocationLedger {
  std::mutex mutex;
  std::unordered_map<void*, size_t> sizes;
  size_t held = 0, peak = 0;
};
AllocationLedger& ledger() {
  static AllocationLedger instance;
  return instance;
}
}  // namespace

bool env_is(const char* name, const char* value) {
  const char* set = std::getenv(name);
  return set && std::strcmp(set, value) == 0;
}

size_t peak_allocated_bytes() {
  std::lock_guard<std::mutex> lock(ledger().mutex);
  return ledger().peak;
}

void reset_peak_allocated_bytes() {
  std::lock_guard<std::mutex> lock(ledger().mutex);
  ledger().peak = ledger().held;
}

void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the sticky-free error so later calls are not blamed
    size_t free = 0, total = 0;
    cudaMemGetInfo(&free, &total);
    fail("out of GPU memory: requested ", mib_ceil(bytes), " MiB, free ", free >> 20, " MiB of ",
         total >> 20, " MiB");
  }
  CUDA_CHECK(err);
  std::lock_guard<std::mutex> lock(ledger().mutex);
  ledger().sizes[p] = bytes;
  ledger().held += bytes;
  ledger().peak = std::max(ledger().peak, ledger().held);
  return p;
}

void device_free(void* ptr) noexcept {
  if (!ptr) return;
  cudaFree(ptr);
  std::lock_guard<std::mutex> lock(ledger().mutex);
  const auto it = ledger().sizes.find(ptr);
  if (it != ledger().sizes.end()) {
    ledger().held -= it->second;
    ledger().sizes.erase(it);
  }
}

CudaContext::CudaContext() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device));
  int major = 0, minor = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  compute_capability_ = 10 * major + minor;
  dependent_launch_allowed_ = env_switch("LSGPT_PDL", {"1", "0"}) == 0 && compute_capability_ >= 90;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUBLAS_CHECK(cublasLtCreate(&cublaslt_));
  workspace_ = device_alloc(kWorkspaceBytes);
  const size_t counter_bytes = sizeof(int) * size_t(kItemCounters);
  item_counters_ = static_cast<int*>(device_alloc(counter_bytes));
  // On the context's stream: a non-blocking stream does not wait for the legacy one.
  CUDA_CHECK(cudaMemsetAsync(item_counters_, 0, counter_bytes, stream_));
}

CudaContext::~CudaContext() {
  if (stream_) cudaStreamSynchronize(stream_);
  device_free(scratch_);
  device_free(item_counters_);
  device_free(workspace_);
  if (cublaslt_) cublasLtDestroy(cublaslt_);
  if (stream_) cudaStreamDestroy(stream_);
}

bool CudaContext::dependent_launch(const void* kernel) {
  if (!dependent_launch_allowed_) return false;
  const auto known = dependent_launch_kernels_.find(kernel);
  if (known != dependent_launch_kernels_.end()) return known->second;
  cudaFuncAttributes attributes{};
  CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  const bool waits = attributes.ptxVersion >= 90;
  dependent_launch_kernels_.emplace(kernel, waits);
  return waits;
}

void* CudaContext::scratch(size_t bytes) {
  if (bytes <= scratch_bytes_) return scratch_;
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  device_free(scratch_);
  scratch_ = nullptr, scratch_bytes_ = 0;
  const size_t grown = std::max(bytes, size_t(1) << 20);
  scratch_ = device_alloc(grown);
  scratch_bytes_ = grown;
  ++scratch_generation_;
  return scratch_;
}

}  // namespace cuda

namespace {

using cuda::bf16;

template <typename T>
T* as(void* p) { return static_cast<T*>(p); }
template <typename T>
const T* as(const void* p) { return static_cast<const T*>(p); }

class CudaBackend final : public Backend {
 public:
  std::string name() const override { return "cuda"; }
  DType dtype() const override { return DType::bf16; }
  DType acc_dtype() const override { return DType::f32; }

  void* alloc(size_t bytes) override { return cuda::device_alloc(bytes); }
  void dealloc(void* ptr) noexcept override {
    if (!ptr) return;
    cudaStreamSynchronize(ctx_.stream());  // kernels still queued may use it
    cuda::device_free(ptr);
  }
  void zero(void* dst, size_t bytes) override {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, ctx_.stream()));
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes)
      CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx_.stream()));
  }
  void upload(void* dst, const void* host_src, size_t bytes) override {
    // From pageable memory the call returns once the source has been staged,
    // so the caller may reuse host_src immediately.
    if (bytes)
      CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, ctx_.stream()));
  }
  void download(void* host_dst, const void* src, size_t bytes) override {
    if (bytes)
      CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream()));
    sync();
  }
  void upload_f32(void* dst, DType dtype, const float* host_src, size_t n) override {
    switch (dtype) {
      case DType::f32: upload(dst, host_src, n * sizeof(float)); return;
      case DType::bf16: {
        std::vector<lsgpt::bf16> staged(n);
        for (size_t i = 0; i < n; ++i) staged[i] = to_bf16(host_src[i]);
        upload(dst, staged.data(), n * sizeof(lsgpt::bf16));
        sync();  // the staging vector dies at the end of this scope
        return;
      }
      default: fail("cuda backend: cannot upload f32 values into ", dtype_name(dtype));
    }
  }
  void download_f32(float* host_dst, const void* src, DType dtype, size_t n) override {
    switch (dtype) {
      case DType::f32: download(host_dst, src, n * sizeof(float)); return;
      case DType::bf16: {
        std::vector<lsgpt::bf16> staged(n);
        download(staged.data(), src, n * sizeof(lsgpt::bf16));
        for (size_t i = 0; i < n; ++i) host_dst[i] = from_bf16(staged[i]);
        return;
      }
      default: fail("cuda backend: cannot download ", dtype_name(dtype), " values as f32");
    }
  }
  size_t peak_memory_bytes() const override { return cuda::peak_allocated_bytes(); }
  void reset_peak_memory() override { cuda::reset_peak_allocated_bytes(); }
  size_t free_memory_bytes() const override {
    size_t free = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free, &total));
    return free;
  }
  void sync() override { CUDA_CHECK(cudaStreamSynchronize(ctx_.stream())); }
  cudaStream_t stream() const { return ctx_.stream(); }
  cuda::CudaContext& context() { return ctx_; }

  void embedding_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe,
                         int B, int T, int C, int pos0) override {
    cuda::embedding_forward(ctx_, as<bf16>(out), tokens, as<bf16>(wte), as<bf16>(wpe), B, T, C,
                            pos0);
  }
  void embedding_backward(void* dwte, void* dwpe, const void* dout, const int32_t* tokens, int B,
                          int T, int C) override {
    cuda::embedding_backward(ctx_, as<bf16>(dwte), as<bf16>(dwpe), as<bf16>(dout), tokens, B, T,
                             C);
  }
  void layernorm_forward(void* out, void* mean, void* rstd, const void* inp, const void* weight,
                         const void* bias, int N, int C) override {
    cuda::layernorm_forward(ctx_, as<bf16>(out), as<float>(mean), as<float>(rstd), as<bf16>(inp),
                            as<bf16>(weight), as<bf16>(bias), N, C);
  }
  void add_layernorm_forward(void* residual, void* out, void* mean, void* rstd, const void* delta,
                             const void* weight, const void* bias, int N, int C) override {
    cuda::add_layernorm_forward(ctx_, as<bf16>(residual), as<bf16>(out), as<float>(mean),
                                as<float>(rstd), as<bf16>(delta), as<bf16>(weight),
                                as<bf16>(bias), N, C);
  }
  void layernorm_backward(void* dinp, void* dweight, void* dbias, void* dinp_colsum,
                          const void* dout, const void* inp, const void* weight, const void* mean,
                          const void* rstd, int N, int C) override {
    cuda::layernorm_backward(ctx_, as<bf16>(dinp), as<bf16>(dweight), as<bf16>(dbias),
                             as<bf16>(dinp_colsum), as<bf16>(dout), as<bf16>(inp),
                             as<bf16>(weight), as<float>(mean), as<float>(rstd), N, C);
  }
  void matmul_forward(void* out, void* pre_gelu, const void* inp, const void* weight,
                      const void* bias, int N, int C, int OC) override {
    cuda::matmul_forward(ctx_, as<bf16>(out), as<bf16>(pre_gelu), as<bf16>(inp),
                         as<bf16>(weight), as<bf16>(bias), N, C, OC);
  }
  void matmul_backward(void* dinp, void* dweight, void* dbias, void* dout, const void* inp,
                       const void* weight, const void* pre_gelu, const void* inp_pre_gelu, int N,
                       int C, int OC) override {
    cuda::matmul_backward(ctx_, as<bf16>(dinp), as<bf16>(dweight), as<bf16>(dbias),
                          as<bf16>(dout), as<bf16>(inp), as<bf16>(weight), as<bf16>(pre_gelu),
                          as<bf16>(inp_pre_gelu), N, C, OC);
  }
  void gelu_forward(void* out, const void* inp, size_t n) override {
    cuda::gelu_forward(ctx_, as<bf16>(out), as<bf16>(inp), n);
  }
  void gelu_backward(void* dinp, const void* inp, const void* dout, size_t n) override {
    cuda::gelu_backward(ctx_, as<bf16>(dinp), as<bf16>(inp), as<bf16>(dout), n);
  }
  void residual_forward(void* out, const void* a, const void* b, size_t n) override {
    cuda::residual_forward(ctx_, as<bf16>(out), as<bf16>(a), as<bf16>(b), n);
  }
  void add_inplace(void* dst, const void* src, size_t n) override {
    cuda::add_inplace(ctx_, as<bf16>(dst), as<bf16>(src), n);
  }
  void attention_forward(void* out, void* lse, void* max_logit, void* kbar, const void* qkv,
                         const AttentionSpec& spec) override {
    cuda::attention_forward(ctx_, as<bf16>(out), as<float>(lse), as<float>(max_logit),
                            as<bf16>(kbar), as<bf16>(qkv), spec);
  }
  void attention_backward(void* dqkv, void* dqkv_colsum, const void* dout, const void* qkv,
                          const void* out, const void* lse, const void* kbar,
                          const AttentionSpec& spec) override {
    cuda::attention_backward(ctx_, as<bf16>(dqkv), as<bf16>(dqkv_colsum), as<bf16>(dout),
                             as<bf16>(qkv), as<bf16>(out), as<float>(lse), as<bf16>(kbar), spec);
  }
  void attention_decode(void* out, void* k_local, void* v_local, void* k_global, void* v_global,
                        const void* qkv, const DecodeSpec& spec) override {
    cuda::attention_decode(ctx_, as<bf16>(out), as<bf16>(k_local), as<bf16>(v_local),
                           as<bf16>(k_global), as<bf16>(v_global), as<bf16>(qkv), spec);
  }
  size_t attention_decode_workspace_bytes(const DecodeSpec& spec) const override {
    return cuda::attention_decode_workspace_bytes(spec);
  }
  void kv_cache_write(void* k_local, void* v_local, void* k_global, void* v_global,
                      const void* qkv, int T, int cache_row, const DecodeSpec& spec) override {
    cuda::kv_cache_write(ctx_, as<bf16>(k_local), as<bf16>(v_local), as<bf16>(k_global),
                         as<bf16>(v_global), as<bf16>(qkv), T, cache_row, spec);
  }
  void embedding_decode(void* out, const int32_t* tokens, const int32_t* positions,
                        const void* wte, const void* wpe, int B, int C) override {
    cuda::embedding_decode(ctx_, as<bf16>(out), tokens, positions, as<bf16>(wte), as<bf16>(wpe),
                           B, C);
  }
  void sample_tokens(int32_t* tokens, const void* logits, SampleParams* params, int B, int V,
                     int Vp, int32_t* advance, int32_t* next_input) override {
    cuda::sample_tokens(ctx_, tokens, as<bf16>(logits), params, B, V, Vp, advance, next_input);
  }
  std::unique_ptr<CapturedWork> capture(const std::function<void()>& work) override;
  uint64_t capture_generation() const override { return ctx_.scratch_generation(); }
  void set_tuning(bool on) override { ctx_.set_tuning(on); }
  void softmax_cross_entropy(void* losses, void* logits, const int32_t* targets, int N, int V,
                             int Vp, double dloss, bool compute_grad, double z_coef,
                             void* lse) override {
    cuda::softmax_cross_entropy(ctx_, as<float>(losses), as<bf16>(logits), targets, N, V, Vp,
                                float(dloss), compute_grad, float(z_coef), as<float>(lse));
  }
  void qk_norm_forward(void* out, void* rstd, const void* qkv, const void* q_gain,
                       const void* k_gain, int N, int n_head, int D, double eps) override {
    cuda::qk_norm_forward(ctx_, as<bf16>(out), as<float>(rstd), as<bf16>(qkv), as<bf16>(q_gain),
                          as<bf16>(k_gain), N, n_head, D, float(eps));
  }
  void qk_norm_backward(void* dqkv, void* dq_gain, void* dk_gain, const void* dout,
                        const void* qkv, const void* q_gain, const void* k_gain,
                        const void* rstd, int N, int n_head, int D) override {
    cuda::qk_norm_backward(ctx_, as<bf16>(dqkv), as<bf16>(dq_gain), as<bf16>(dk_gain),
                           as<bf16>(dout), as<bf16>(qkv), as<bf16>(q_gain), as<bf16>(k_gain),
                           as<float>(rstd), N, n_head, D);
  }
  double sum_squares(const void* x, size_t n) override {
    return cuda::sum_squares(ctx_, as<bf16>(x), n);
  }
  void adamw_update(void* param, void* master, const void* grad, void* m, void* v, size_t n,
                    const AdamWSettings& s) override {
    cuda::adamw_update(ctx_, as<bf16>(param), as<float>(master), as<bf16>(grad), as<float>(m),
                       as<float>(v), n, s);
  }
  void adamw_update_segments(void* param, void* master, const void* grad, void* m, void* v,
                             const AdamWSegment* segments, size_t n_segments,
                             const AdamWSettings& s) override {
    if (cuda::env_is("LSGPT_CUDA_ADAMW", "per-tensor"))
      return Backend::adamw_update_segments(param, master, grad, m, v, segments, n_segments, s);
    cuda::adamw_update_segments(ctx_, as<bf16>(param), as<float>(master), as<bf16>(grad),
                                as<float>(m), as<float>(v), segments, n_segments, s);
  }

 private:
  cuda::CudaContext ctx_;
};

// A CUDA graph instantiated from one stream capture, replayed on that stream.
class CudaGraph final : public CapturedWork {
 public:
  CudaGraph(cudaGraphExec_t exec, cudaStream_t stream) : exec_(exec), stream_(stream) {}
  ~CudaGraph() override {
    cudaStreamSynchronize(stream_);
    cudaGraphExecDestroy(exec_);
  }
  void replay() override { CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }

 private:
  cudaGraphExec_t exec_;
  cudaStream_t stream_;
};

std::unique_ptr<CapturedWork> CudaBackend::capture(const std::function<void()>& work) {
  const cudaStream_t stream = ctx_.stream();
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t graph = nullptr;
  try {
    work();
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);  // leave the stream usable
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw;
  }
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  CUDA_CHECK(err);
  return std::make_unique<CudaGraph>(exec, stream);
}

}  // namespace

void* cuda_stream_of(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda ? static_cast<void*>(cuda->stream()) : nullptr;
}

bool cuda_attention_forward_uses_sm90(Backend& backend, const AttentionSpec& spec) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda && cuda::attention_forward_uses_sm90(cuda->context(), spec);
}

bool cuda_attention_backward_uses_sm90(Backend& backend, const AttentionSpec& spec) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda && cuda::attention_backward_uses_sm90(cuda->context(), spec);
}

const char* cuda_last_attention_backward_kernel() {
  return cuda::attention_backward_last_kernel();
}

bool cuda_last_attention_backward_ran_key_direction_pass() {
  return cuda::attention_backward_last_ran_key_direction_pass();
}

const char* cuda_last_dbias_path() {
  switch (cuda::matmul_last_dbias_path()) {
    case cuda::DbiasPath::epilogue_f32: return "bgradb-f32";
    case cuda::DbiasPath::epilogue_bf16: return "bgradb-bf16";
    case cuda::DbiasPath::column_sum: return "column-sum";
    case cuda::DbiasPath::none: break;
  }
  return "none";
}

std::unique_ptr<Backend> make_cuda_backend() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaErrorInsufficientDriver) {
    cudaGetLastError();
    fail("no CUDA GPU found: no NVIDIA driver is loaded, or it is older than the CUDA ",
         CUDART_VERSION / 1000, ".", CUDART_VERSION % 1000 / 10, " runtime this lsgpt was built with");
  }
  if (err != cudaSuccess) {
    cudaGetLastError();
    fail("no CUDA GPU found: ", cudaGetErrorString(err));
  }
  if (count == 0) fail("no CUDA GPU found: the CUDA driver reports no devices");
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  if (prop.major < 8)
    fail("GPU ", device, " (", prop.name, ") has compute capability ", prop.major, ".",
         prop.minor, "; this lsgpt build needs 8.0 or newer (it carries sm_90a code and "
         "compute_80 PTX)");
  // A driver older than the toolkit cannot load the kernels; say so once, here.
  cudaFuncAttributes attributes{};
  const cudaError_t load = cudaFuncGetAttributes(&attributes, cuda::probe_kernel);
  if (load != cudaSuccess) {
    cudaGetLastError();
    fail("GPU ", device, " (", prop.name, ", compute capability ", prop.major, ".", prop.minor,
         ") cannot run this build's kernels: ", cudaGetErrorString(load));
  }
  return std::make_unique<CudaBackend>();
}

}  // namespace lsgpt
