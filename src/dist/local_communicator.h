// The communicator of a single process (no launcher): every collective over
// one rank is a copy or nothing, so the distributed code path runs unchanged.
#pragma once

#include "dist/communicator.h"

namespace lsgpt {

class LocalCommunicator : public Communicator {
 public:
  explicit LocalCommunicator(Backend& backend) : be_(backend) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "single process"; }
  void all_gather_host(const void* in, void* out, size_t bytes) override;
  void all_gather(void* buf, size_t count, DType dtype) override {}
  void all_to_all(const void* send, void* recv, size_t count, DType dtype) override;
  void reduce(void* buf, size_t count, DType dtype, int root) override {}

 private:
  Backend& be_;
};

}  // namespace lsgpt
