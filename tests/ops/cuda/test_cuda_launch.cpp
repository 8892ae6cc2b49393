// Programmatic dependent launch (src/ops/cuda/launch.cuh): on a Hopper GPU
// (where the default build's sm_90a code runs; newer GPUs JIT the compute_80
// PTX, which has no griddepcontrol, so they launch without PDL), two
// kernels launched one after the other through `launch_kernel` are joined
// by a programmatic edge (the second may start before the first
// ends and waits inside), the result is the same as with ordinary launches,
// and LSGPT_PDL=0 turns it off. The whole-model equivalence (every bit of a
// training run with PDL on and off) is TrainDeterminism.CudaRepeatsAndResumesBitForBit.
#include <gtest/gtest.h>

#ifdef LSGPT_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "../../support/numeric.h"
#include "core/dtype.h"
#include "core/env_switch.h"
#include "cuda_test_util.h"
#include "hopper_test_util.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/cuda_context.h"
#include "ops/cuda/ops.h"

namespace lsgpt {
namespace {
namespace test_cuda_launch {

using namespace cuda_test;

struct Chain {
  std::vector<cudaGraphEdgeData> edges;
  std::vector<float> result;
};

// d = (a + b) + a through two residual kernels captured into a graph on the
// context's stream; the graph's edges and d after one replay.
Chain capture_chain(cuda::CudaContext& ctx, const std::vector<float>& a,
                    const std::vector<float>& b) {
  const size_t n = a.size();
  std::vector<bf16> a16(n), b16(n);
  for (size_t i = 0; i < n; ++i) a16[i] = to_bf16(a[i]), b16[i] = to_bf16(b[i]);
  cuda::bf16* buffers[4] = {};
  for (cuda::bf16*& p : buffers) CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), n * 2));
  CUDA_CHECK(cudaMemcpy(buffers[0], a16.data(), n * 2, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(buffers[1], b16.data(), n * 2, cudaMemcpyHostToDevice));

  cudaGraph_t graph = nullptr;
  CUDA_CHECK(cudaStreamBeginCapture(ctx.stream(), cudaStreamCaptureModeThreadLocal));
  cuda::residual_forward(ctx, buffers[2], buffers[0], buffers[1], n);
  cuda::residual_forward(ctx, buffers[3], buffers[2], buffers[0], n);
  CUDA_CHECK(cudaStreamEndCapture(ctx.stream(), &graph));

  Chain chain;
  size_t n_edges = 0;
  CUDA_CHECK(cudaGraphGetEdges(graph, nullptr, nullptr, nullptr, &n_edges));
  std::vector<cudaGraphNode_t> from(n_edges), to(n_edges);
  chain.edges.resize(n_edges);
  CUDA_CHECK(cudaGraphGetEdges(graph, from.data(), to.data(), chain.edges.data(), &n_edges));

  cudaGraphExec_t exec = nullptr;
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_CHECK(cudaGraphLaunch(exec, ctx.stream()));
  CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  std::vector<bf16> d16(n);
  CUDA_CHECK(cudaMemcpy(d16.data(), buffers[3], n * 2, cudaMemcpyDeviceToHost));
  for (bf16 x : d16) chain.result.push_back(from_bf16(x));
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  for (cuda::bf16* p : buffers) CUDA_CHECK(cudaFree(p));
  return chain;
}

// bf16(bf16(a + b) + a), as the kernels round.
std::vector<float> expected_chain(const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<float> d(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const float ab = from_bf16(to_bf16(from_bf16(to_bf16(a[i])) + from_bf16(to_bf16(b[i]))));
    d[i] = from_bf16(to_bf16(ab + from_bf16(to_bf16(a[i]))));
  }
  return d;
}

TEST(CudaLaunch, DependentKernelsJoinByAProgrammaticEdge) {
  REQUIRE_CUDA(gpu);  // a backend, for the skip; the test makes its own contexts
  REQUIRE_HOPPER();  // the build's sm_90a code, with griddepcontrol
  // An odd length takes the residual kernel's scalar path as well as the
  // vector one; 1 << 20 entries make the first kernel several waves long.
  const size_t n = (size_t(1) << 20) + 3;
  const std::vector<float> a = testing::random_vector<float>(n, 11, -4.0, 4.0);
  const std::vector<float> b = testing::random_vector<float>(n, 12, -4.0, 4.0);
  const std::vector<float> want = expected_chain(a, b);
  for (const char* pdl : {static_cast<const char*>(nullptr), "1", "0"}) {
    SCOPED_TRACE(std::string("LSGPT_PDL=") + (pdl ? pdl : "(unset)"));
    ScopedEnv env("LSGPT_PDL", pdl);
    cuda::CudaContext ctx;
    const Chain chain = capture_chain(ctx, a, b);
    ASSERT_EQ(chain.edges.size(), 1u);
    const bool off = pdl && std::string(pdl) == "0";
    EXPECT_EQ(chain.edges[0].type,
              off ? cudaGraphDependencyTypeDefault : cudaGraphDependencyTypeProgrammatic);
    EXPECT_EQ(chain.result, want);
  }
}

// On every GPU, when the backend starts.
TEST(CudaLaunch, RefusesABadSwitch) {
  REQUIRE_CUDA(gpu);  // a backend, for the skip; the test makes its own contexts
  ScopedEnv env("LSGPT_PDL", "yes");
  expect_refusal([] { cuda::CudaContext ctx; }, "LSGPT_PDL must be 1 or 0, got 'yes'",
                            "the CUDA context");
}

}  // namespace test_cuda_launch
}  // namespace
}  // namespace lsgpt
#endif  // LSGPT_HAVE_CUDA
