#include <memory>
#include <string>

#include "core/error.h"
#include "ops/backend.h"
#include "ops/cpu/cpu_backend.h"

#ifdef LSGPT_HAVE_CUDA
#include "ops/cuda/cuda_backend.h"
#endif

namespace lsgpt {

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return std::make_unique<CpuBackend<float>>();
  if (device == "cpu64") return std::make_unique<CpuBackend<double>>();
  if (device == "cuda") {
#ifdef LSGPT_HAVE_CUDA
    return make_cuda_backend();
#else
    fail("--device cuda: this lsgpt was built without the CUDA backend "
         "(no nvcc was found at configure time; rebuild with -DLSGPT_CUDA=ON)");
#endif
  }
  fail("unknown device '", device, "' (expected cpu or cuda)");
}

}  // namespace lsgpt
