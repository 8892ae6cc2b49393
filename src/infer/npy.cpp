#include "infer/npy.h"

#include "core/error.h"
#include "io/atomic_file.h"

namespace lsgpt {

void write_npy_f32(const std::string& path, std::span<const float> data,
                   const std::vector<int64_t>& shape) {
  int64_t n = 1;
  std::string dims;
  for (int64_t d : shape) {
    n *= d;
    dims += std::to_string(d) + ", ";
  }
  LSGPT_CHECK(size_t(n) == data.size(), "npy shape does not match the data");
  if (shape.size() > 1) dims.resize(dims.size() - 1);  // "(3, 4)" but "(3,)"
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  // The spec pads the header with spaces to a multiple of 64 bytes, ending in '\n'.
  const size_t preamble = 10;
  header.append(64 - (preamble + header.size() + 1) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += char(header.size() & 0xff);
  out += char(header.size() >> 8);
  out += header;
  AtomicFileWriter w(path);
  w.write(out);
  w.write(data.data(), data.size_bytes());
  w.commit();
}

}  // namespace lsgpt
