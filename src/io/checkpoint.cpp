#include "io/checkpoint.h"

#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <optional>

#include "core/error.h"
#include "io/atomic_file.h"
#include "model/params.h"

namespace lsgpt {
namespace {

static_assert(std::endian::native == std::endian::little,
              "checkpoints store raw little-endian floats");

using json = nlohmann::json;

constexpr char kMagic[8] = {'L', 'S', 'G', 'P', 'T', 'C', 'K', 'P'};
constexpr size_t kPrefixBytes = 16;  // magic, version, header length
constexpr size_t kCrcBytes = 4;
constexpr size_t kDataAlignment = 64;

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  return uint32_t(::crc32_z(crc, static_cast<const Bytef*>(data), n));
}

void put_u32(uint8_t* p, uint32_t x) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(x >> (8 * i));
}

uint32_t get_u32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

struct TensorEntry {
  const char* name;
  const std::vector<float>* data;
};

std::vector<TensorEntry> tensors_of(const Checkpoint& ck) {
  std::vector<TensorEntry> t{{"params", &ck.params}};
  if (!ck.adam_m.empty() || !ck.adam_v.empty()) {
    t.push_back({"adam_m", &ck.adam_m});
    t.push_back({"adam_v", &ck.adam_v});
  }
  return t;
}

void check_savable(const Checkpoint& ck) {
  ModelConfig cfg = ck.model;
  cfg.normalize_and_validate();
  if (!(cfg == ck.model))
    fail("cannot save checkpoint: its model config is not normalized (call normalize_and_validate)");
  const size_t total = make_param_layout(cfg).total;
  if (ck.params.size() != total)
    fail("cannot save checkpoint: ", ck.params.size(), " parameters but the model has ", total);
  if (ck.adam_m.size() != ck.adam_v.size() || (!ck.adam_m.empty() && ck.adam_m.size() != total))
    fail("cannot save checkpoint: optimizer state sizes m=", ck.adam_m.size(),
         " v=", ck.adam_v.size(), " do not match the ", total, " parameters");
  if (ck.step < 0) fail("cannot save checkpoint: negative step ", ck.step);
}

// The prefix and the padded header: everything before the float data.
std::string encode_head(const Checkpoint& ck) {
  json table = json::array();
  uint64_t offset = 0;
  for (const TensorEntry& t : tensors_of(ck)) {
    table.push_back({{"name", t.name}, {"offset", offset}, {"count", uint64_t(t.data->size())}});
    offset += uint64_t(t.data->size()) * sizeof(float);
  }
  json header{{"format", "lsgpt checkpoint"},
              {"model", ck.model.to_json()},
              {"train", ck.train},
              {"state", ck.state},
              {"step", ck.step},
              {"tensors", table}};
  // Opaque train/state strings (file paths) need not be UTF-8; dump() would throw.
  std::string text = header.dump(-1, ' ', false, json::error_handler_t::replace);
  size_t padded = text.size();
  while ((kPrefixBytes + padded) % kDataAlignment != 0) ++padded;
  text.resize(padded, ' ');
  if (text.size() > std::numeric_limits<uint32_t>::max())
    fail("cannot save checkpoint: its JSON header is larger than 4 GiB");

  std::string head(kPrefixBytes, '\0');
  std::memcpy(head.data(), kMagic, 8);
  put_u32(reinterpret_cast<uint8_t*>(head.data()) + 8, kCheckpointVersion);
  put_u32(reinterpret_cast<uint8_t*>(head.data()) + 12, uint32_t(text.size()));
  return head + text;
}

template <typename Sink>
void emit(const Checkpoint& ck, Sink&& write) {
  check_savable(ck);
  uint32_t crc = crc32_update(0, nullptr, 0);
  auto put = [&](const void* p, size_t n) {
    crc = crc32_update(crc, p, n);
    write(p, n);
  };
  const std::string head = encode_head(ck);
  put(head.data(), head.size());
  for (const TensorEntry& t : tensors_of(ck)) put(t.data->data(), t.data->size() * sizeof(float));
  uint8_t tail[kCrcBytes];
  put_u32(tail, crc);
  write(tail, kCrcBytes);
}

struct ParsedTable {
  struct Entry {
    std::string name;
    uint64_t offset = 0, count = 0;
  };
  std::vector<Entry> entries;
  uint64_t data_bytes = 0;
};

// Reads the tensor table; any problem is returned as text (judged after the CRC).
std::optional<ParsedTable> read_table(const json& header, std::string& problem) {
  if (!header.is_object()) return problem = "the header is not a JSON object", std::nullopt;
  if (!header.contains("tensors") || !header["tensors"].is_array())
    return problem = "the header has no tensor table", std::nullopt;
  ParsedTable t;
  for (const json& e : header["tensors"]) {
    if (!e.is_object() || !e.contains("name") || !e["name"].is_string() || !e.contains("offset") ||
        !e["offset"].is_number_unsigned() || !e.contains("count") ||
        !e["count"].is_number_unsigned())
      return problem = "a tensor table entry lacks a name, offset or count", std::nullopt;
    ParsedTable::Entry en{e["name"].get<std::string>(), e["offset"].get<uint64_t>(),
                          e["count"].get<uint64_t>()};
    if (en.name != "params" && en.name != "adam_m" && en.name != "adam_v")
      return problem = "unknown tensor '" + en.name + "' in the tensor table", std::nullopt;
    for (const auto& prev : t.entries)
      if (prev.name == en.name)
        return problem = "tensor '" + en.name + "' is listed twice", std::nullopt;
    if (en.offset != t.data_bytes)
      return problem = "tensor '" + en.name + "' does not start where the previous one ends",
             std::nullopt;
    if (en.count > (std::numeric_limits<uint64_t>::max() - t.data_bytes) / sizeof(float) / 2)
      return problem = "tensor '" + en.name + "' has an absurd element count", std::nullopt;
    t.data_bytes += en.count * sizeof(float);
    t.entries.push_back(std::move(en));
  }
  return t;
}

std::vector<float> copy_floats(const uint8_t* p, uint64_t count) {
  std::vector<float> v(count);
  if (count) std::memcpy(v.data(), p, count * sizeof(float));
  return v;
}

std::string json_text(const json& j) { return j.is_null() ? "off" : j.dump(); }

}  // namespace

std::vector<uint8_t> serialize_checkpoint(const Checkpoint& ck) {
  std::vector<uint8_t> out;
  emit(ck, [&](const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  });
  return out;
}

void save_checkpoint(const std::string& path, const Checkpoint& ck) {
  check_savable(ck);  // before the temporary file exists
  AtomicFileWriter file(path);
  emit(ck, [&](const void* p, size_t n) { file.write(p, n); });
  file.commit();
}

Checkpoint parse_checkpoint(std::span<const uint8_t> bytes, const std::string& origin) {
  const std::string what = "checkpoint '" + origin + "'";
  const size_t size = bytes.size();
  if (size < kPrefixBytes + kCrcBytes)
    fail(what, " is too short (", size, " bytes) to be an lsgpt checkpoint");
  const uint8_t* base = bytes.data();
  if (std::memcmp(base, kMagic, 8) != 0)
    fail(what, " is not an lsgpt checkpoint (bad magic bytes)");
  const uint32_t version = get_u32(base + 8);
  if (version != kCheckpointVersion)
    fail(what, " has unknown format version ", version, " (this lsgpt reads version ",
         kCheckpointVersion, ")");
  const uint64_t header_bytes = get_u32(base + 12);
  if (header_bytes > size - kPrefixBytes - kCrcBytes)
    fail(what, " is truncated: its header of ", header_bytes, " bytes runs past the end of the ",
         size, "-byte file");
  const uint64_t data_start = kPrefixBytes + header_bytes;

  std::string problem;
  json header = json::parse(base + kPrefixBytes, base + data_start, nullptr, false);
  std::optional<ParsedTable> table;
  if (header.is_discarded()) problem = "its JSON header does not parse";
  else table = read_table(header, problem);

  if (table) {
    const uint64_t expected = data_start + table->data_bytes + kCrcBytes;
    if (size < expected)
      fail(what, " is truncated: ", size, " bytes where its header describes ", expected);
    if (size > expected)
      fail(what, " is corrupt: ", size - expected, " unexpected bytes after its data");
  }
  const uint32_t stored_crc = get_u32(base + size - kCrcBytes);
  const uint32_t actual_crc = crc32_update(crc32_update(0, nullptr, 0), base, size - kCrcBytes);
  if (stored_crc != actual_crc)
    fail(what, " is corrupt: checksum mismatch (CRC-32 stored ", stored_crc, ", computed ",
         actual_crc, ")");
  if (!table) fail(what, " is corrupt: ", problem);

  Checkpoint ck;
  if (!header.contains("model")) fail(what, " has no model config");
  try {
    ck.model = ModelConfig::from_json(header["model"]);
  } catch (const Error& e) {
    fail(what, " has an invalid model config: ", e.what());
  }
  if (!header.contains("step") || !header["step"].is_number_integer() ||
      header["step"].get<int64_t>() < 0)
    fail(what, " has no valid step count");
  ck.step = header["step"].get<int64_t>();
  ck.train = header.value("train", json::object());
  ck.state = header.value("state", json::object());

  // num_parameters() is O(1); the layout it equals is built only by callers.
  const size_t total = ck.model.num_parameters();
  uint64_t n_params = 0, n_m = 0, n_v = 0;
  for (const auto& e : table->entries)
    (e.name == "params" ? n_params : e.name == "adam_m" ? n_m : n_v) = e.count;
  if (n_params != total)
    fail(what, " holds ", n_params, " parameters but its model config needs ", total);
  bool m_listed = false, v_listed = false;
  for (const auto& e : table->entries) m_listed |= e.name == "adam_m", v_listed |= e.name == "adam_v";
  if (m_listed != v_listed)
    fail(what, " has optimizer state ", m_listed ? "m" : "v", " without ", m_listed ? "v" : "m");
  if (m_listed && (n_m != total || n_v != total))
    fail(what, " has optimizer state of ", n_m, " (m) and ", n_v, " (v) values for ", total,
         " parameters");

  for (const auto& e : table->entries) {
    std::vector<float> v = copy_floats(base + data_start + e.offset, e.count);
    if (e.name == "params") ck.params = std::move(v);
    else if (e.name == "adam_m") ck.adam_m = std::move(v);
    else ck.adam_v = std::move(v);
  }
  return ck;
}

Checkpoint load_checkpoint(const std::string& path) {
  MappedFile file(path);
  return parse_checkpoint(file.bytes(), path);
}

std::string describe_config_difference(const ModelConfig& a, const ModelConfig& b) {
  const json ja = a.to_json(), jb = b.to_json();
  std::vector<std::string> keys;
  for (auto& [k, _] : ja.items()) keys.push_back(k);
  for (auto& [k, _] : jb.items())
    if (!ja.contains(k)) keys.push_back(k);
  std::string out;
  for (const std::string& k : keys) {
    const json va = ja.contains(k) ? ja[k] : json(), vb = jb.contains(k) ? jb[k] : json();
    if (va == vb) continue;
    if (!out.empty()) out += "; ";
    out += k + " (checkpoint " + json_text(va) + " vs expected " + json_text(vb) + ")";
  }
  return out;
}

Checkpoint load_checkpoint_expecting(const std::string& path, const ModelConfig& expected) {
  Checkpoint ck = load_checkpoint(path);
  const std::string diff = describe_config_difference(ck.model, expected);
  if (!diff.empty())
    fail("checkpoint '", path, "' was saved with a different model config: ", diff);
  return ck;
}

}  // namespace lsgpt
