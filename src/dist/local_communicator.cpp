#include "dist/local_communicator.h"

#include <cstring>

#include "ops/backend.h"

namespace lsgpt {

void LocalCommunicator::all_gather_host(const void* in, void* out, size_t bytes) {
  if (bytes && in != out) std::memmove(out, in, bytes);
}

void LocalCommunicator::all_to_all(const void* send, void* recv, size_t count, DType dtype) {
  if (count && send != recv) be_.copy(recv, send, count * dtype_size(dtype));
}

}  // namespace lsgpt
