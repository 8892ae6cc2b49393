#include "io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/dtype.h"
#include "core/error.h"
#include "io/atomic_file.h"

namespace lsgpt::safetensors {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors stores raw little-endian values");

using json = nlohmann::json;

struct DtypeInfo {
  Dtype dtype;
  const char* name;
  size_t size;
};

constexpr DtypeInfo kDtypes[] = {
    {Dtype::BOOL, "BOOL", 1},   {Dtype::U8, "U8", 1},     {Dtype::I8, "I8", 1},
    {Dtype::F8_E5M2, "F8_E5M2", 1}, {Dtype::F8_E4M3, "F8_E4M3", 1}, {Dtype::I16, "I16", 2},
    {Dtype::U16, "U16", 2},     {Dtype::F16, "F16", 2},   {Dtype::BF16, "BF16", 2},
    {Dtype::I32, "I32", 4},     {Dtype::U32, "U32", 4},   {Dtype::F32, "F32", 4},
    {Dtype::I64, "I64", 8},     {Dtype::U64, "U64", 8},   {Dtype::F64, "F64", 8},
};

const DtypeInfo& info(Dtype t) {
  for (const DtypeInfo& d : kDtypes)
    if (d.dtype == t) return d;
  fail("internal: unknown safetensors dtype");
}

uint64_t get_u64(const uint8_t* p) {
  uint64_t x = 0;
  for (int i = 7; i >= 0; --i) x = x << 8 | p[i];
  return x;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// nlohmann keeps the last of duplicate keys silently; a safetensors header
// with a name twice is ambiguous, so duplicates are refused while parsing.
// Nesting deeper than tensor entries' arrays is refused too, which bounds the
// parser's memory whatever the input.
json parse_header(const uint8_t* begin, const uint8_t* end, const std::string& origin) {
  std::vector<std::set<std::string>> open_objects;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth >= 3) fail(origin, ": safetensors header is nested too deeply");
        if (event == json::parse_event_t::object_start) open_objects.emplace_back();
        break;
      case json::parse_event_t::key: {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (open_objects.empty()) break;
        if (!open_objects.back().insert(key).second)
          fail(origin, ": safetensors header lists '", key, "' twice");
        break;
      }
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, callback);
  } catch (const json::exception& e) {
    fail(origin, ": safetensors header is not valid JSON: ", e.what());
  }
}

uint64_t checked_product(const std::vector<int64_t>& shape, uint64_t elem_size, bool& overflow) {
  uint64_t n = elem_size;
  overflow = false;
  for (int64_t d : shape) overflow |= __builtin_mul_overflow(n, uint64_t(d), &n);
  return n;
}

TensorView parse_entry(const std::string& name, const json& e, const std::string& origin,
                       uint64_t& begin, uint64_t& end) {
  const std::string where = origin + ": tensor '" + name + "'";
  if (!e.is_object()) fail(where, ": header entry is not an object");
  for (auto& [key, _] : e.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      fail(where, ": unexpected key '", key, "' in its header entry");
  if (!e.contains("dtype") || !e["dtype"].is_string()) fail(where, ": missing dtype");
  if (!e.contains("shape") || !e["shape"].is_array()) fail(where, ": missing shape");
  if (!e.contains("data_offsets") || !e["data_offsets"].is_array())
    fail(where, ": missing data_offsets");

  TensorView t;
  t.name = name;
  const std::string& dtype = e["dtype"].get_ref<const std::string&>();
  const DtypeInfo* found = nullptr;
  for (const DtypeInfo& d : kDtypes)
    if (dtype == d.name) found = &d;
  if (!found) fail(where, ": unknown dtype '", dtype, "'");
  t.dtype = found->dtype;

  for (const json& d : e["shape"]) {
    if (!d.is_number_integer()) fail(where, ": shape has a non-integer dimension ", d.dump());
    if (d.is_number_unsigned() ? d.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())
                               : d.get<int64_t>() < 0)
      fail(where, ": shape has an invalid dimension ", d.dump());
    t.shape.push_back(d.get<int64_t>());
  }
  const json& off = e["data_offsets"];
  if (off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
    fail(where, ": data_offsets must be two non-negative integers, got ", off.dump());
  begin = off[0].get<uint64_t>();
  end = off[1].get<uint64_t>();
  if (end < begin) fail(where, ": data_offsets [", begin, ", ", end, "] end before they begin");

  bool overflow = false;
  const uint64_t nbytes = checked_product(t.shape, found->size, overflow);
  if (overflow || nbytes != end - begin)
    fail(where, ": shape ", shape_text(t.shape), " of ", dtype, " needs ",
         overflow ? std::string("more than 2^64") : std::to_string(nbytes),
         " bytes but data_offsets cover ", end - begin);
  return t;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    const float magnitude = std::ldexp(float(mantissa), -24);  // zero or subnormal
    return sign ? -magnitude : magnitude;
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct Layout {
  std::string header;  // padded JSON
  std::vector<const TensorF32*> order;
};

Layout plan(const std::vector<TensorF32>& tensors,
            const std::map<std::string, std::string>& metadata) {
  Layout lay;
  for (const TensorF32& t : tensors) lay.order.push_back(&t);
  std::sort(lay.order.begin(), lay.order.end(),
            [](const TensorF32* a, const TensorF32* b) { return a->name < b->name; });
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i = 0; i < lay.order.size(); ++i) {
    const TensorF32& t = *lay.order[i];
    if (t.name == "__metadata__") fail("safetensors: a tensor cannot be named __metadata__");
    if (i > 0 && lay.order[i - 1]->name == t.name)
      fail("safetensors: tensor '", t.name, "' given twice");
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) fail("safetensors: tensor '", t.name, "' has a negative dimension");
      numel *= uint64_t(d);
    }
    if (!t.fill && numel != t.data.size())
      fail("safetensors: tensor '", t.name, "' has shape ", shape_text(t.shape), " but ",
           t.data.size(), " values");
    const uint64_t bytes = numel * sizeof(float);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  lay.header = header.dump();
  // The reference writer pads with spaces so the data starts 8-byte aligned.
  while (lay.header.size() % 8 != 0) lay.header += ' ';
  return lay;
}

template <typename Sink>
void emit(const Layout& lay, Sink&& write) {
  uint8_t length[8];
  const uint64_t n = lay.header.size();
  for (int i = 0; i < 8; ++i) length[i] = uint8_t(n >> (8 * i));
  write(length, 8);
  write(lay.header.data(), lay.header.size());
  std::vector<float> scratch;
  for (const TensorF32* t : lay.order) {
    if (!t->fill) {
      write(t->data.data(), t->data.size() * sizeof(float));
      continue;
    }
    uint64_t numel = 1;
    for (int64_t d : t->shape) numel *= uint64_t(d);
    scratch.assign(numel, 0.0f);
    t->fill(scratch);
    write(scratch.data(), scratch.size() * sizeof(float));
  }
}

}  // namespace

size_t dtype_size(Dtype t) { return info(t).size; }
std::string_view dtype_name(Dtype t) { return info(t).name; }

uint64_t TensorView::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= uint64_t(d);
  return n;
}

const TensorView* File::find(std::string_view name) const {
  for (const TensorView& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

File parse(std::span<const uint8_t> buffer, const std::string& origin) {
  const uint64_t size = buffer.size();
  if (size < 8)
    fail(origin, ": too short (", size, " bytes) to be a safetensors file");
  const uint64_t header_bytes = get_u64(buffer.data());
  if (header_bytes > kMaxHeaderBytes)
    fail(origin, ": safetensors header length ", header_bytes, " is absurdly large (limit ",
         kMaxHeaderBytes, " bytes); not a safetensors file?");
  if (header_bytes > size - 8)
    fail(origin, ": safetensors header length ", header_bytes,
         " runs past the end of the file (", size, " bytes); truncated?");
  if (header_bytes < 2 || buffer[8] != '{')
    fail(origin, ": safetensors header does not start with '{'");
  const uint8_t* header_begin = buffer.data() + 8;
  const json header = parse_header(header_begin, header_begin + header_bytes, origin);
  if (!header.is_object()) fail(origin, ": safetensors header is not a JSON object");

  const std::span<const uint8_t> data = buffer.subspan(8 + header_bytes);
  File file;
  struct Placed {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Placed> placed;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail(origin, ": __metadata__ is not an object");
      for (auto& [k, v] : entry.items()) {
        if (!v.is_string()) fail(origin, ": __metadata__ value of '", k, "' is not a string");
        file.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    uint64_t begin = 0, end = 0;
    TensorView t = parse_entry(name, entry, origin, begin, end);
    if (end > data.size())
      fail(origin, ": tensor '", name, "' data_offsets [", begin, ", ", end,
           "] run past the end of the ", data.size(), "-byte data section");
    t.bytes = data.subspan(begin, end - begin);
    placed.push_back({begin, end, file.tensors.size()});
    file.tensors.push_back(std::move(t));
  }

  std::sort(placed.begin(), placed.end(), [](const Placed& a, const Placed& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  std::string previous;
  for (const Placed& p : placed) {
    const std::string& name = file.tensors[p.index].name;
    if (p.begin < covered)
      fail(origin, ": tensor '", name, "' overlaps tensor '", previous, "' (bytes ", p.begin,
           "..", covered, ")");
    if (p.begin > covered)
      fail(origin, ": bytes ", covered, "..", p.begin, " of the data section belong to no tensor");
    covered = p.end;
    previous = name;
  }
  if (covered != data.size())
    fail(origin, ": bytes ", covered, "..", data.size(),
         " of the data section belong to no tensor");

  std::vector<TensorView> ordered;
  for (const Placed& p : placed) ordered.push_back(std::move(file.tensors[p.index]));
  file.tensors = std::move(ordered);
  return file;
}

std::vector<float> to_float(const TensorView& t, const std::string& origin) {
  const uint64_t n = t.numel();
  std::vector<float> out(n);
  const uint8_t* p = t.bytes.data();
  switch (t.dtype) {
    case Dtype::F32:
      if (n) std::memcpy(out.data(), p, n * 4);
      break;
    case Dtype::F64:
      for (uint64_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        out[i] = float(d);
      }
      break;
    case Dtype::F16:
      for (uint64_t i = 0; i < n; ++i) out[i] = half_to_float(uint16_t(p[2 * i] | p[2 * i + 1] << 8));
      break;
    case Dtype::BF16:
      for (uint64_t i = 0; i < n; ++i)
        out[i] = from_bf16(bf16{uint16_t(p[2 * i] | p[2 * i + 1] << 8)});
      break;
    default:
      fail(origin, ": tensor '", t.name, "' has dtype ", dtype_name(t.dtype),
           "; only F32, F16, BF16 and F64 weights can be read");
  }
  return out;
}

std::vector<uint8_t> serialize(const std::vector<TensorF32>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  const Layout lay = plan(tensors, metadata);
  std::vector<uint8_t> out;
  emit(lay, [&](const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  });
  return out;
}

void write(const std::string& path, const std::vector<TensorF32>& tensors,
           const std::map<std::string, std::string>& metadata) {
  const Layout lay = plan(tensors, metadata);
  AtomicFileWriter file(path);
  emit(lay, [&](const void* p, size_t n) { file.write(p, n); });
  file.commit();
}

}  // namespace lsgpt::safetensors
