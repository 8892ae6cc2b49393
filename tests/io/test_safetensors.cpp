// safetensors: deterministic F32 writing, F32/F16/BF16/F64 reading, and a
// refusal (never an out-of-bounds read) for each malformation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "io/safetensors.h"
#include "io_test_support.h"

namespace lsgpt {
namespace {
namespace test_safetensors {

namespace st = safetensors;

std::vector<uint8_t> raw(const std::string& header, size_t data_bytes,
                         uint64_t claimed_length = UINT64_MAX) {
  const uint64_t n = claimed_length == UINT64_MAX ? header.size() : claimed_length;
  std::vector<uint8_t> out;
  for (int i = 0; i < 8; ++i) out.push_back(uint8_t(n >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  for (size_t i = 0; i < data_bytes; ++i) out.push_back(uint8_t(i * 37 + 11));
  return out;
}

void expect_refused(const std::vector<uint8_t>& bytes, const std::string& fragment) {
  try {
    st::parse(bytes, "test.safetensors");
    ADD_FAILURE() << "accepted; expected an error containing '" << fragment << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("test.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find(fragment), std::string::npos) << "message: " << msg << "\nmissing: " << fragment;
  }
}

TEST(Safetensors, RoundTripAndDeterministicLayout) {
  const auto a = testing::random_floats(6, 1), b = testing::random_floats(4, 2);
  const std::vector<float> scalar{3.5f}, empty;
  std::vector<st::TensorF32> tensors{{"zeta", {2, 3}, a, {}},
                                     {"alpha", {4}, b, {}},
                                     {"scalar", {}, scalar, {}},
                                     {"nothing", {0, 3}, empty, {}}};
  const auto bytes = st::serialize(tensors, {{"format", "pt"}});
  std::reverse(tensors.begin(), tensors.end());
  EXPECT_EQ(st::serialize(tensors, {{"format", "pt"}}), bytes) << "order of input matters";

  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u) << "data section is not 8-byte aligned";

  const st::File f = st::parse(bytes, "mem");
  EXPECT_EQ(f.metadata.at("format"), "pt");
  ASSERT_EQ(f.tensors.size(), 4u);
  // Data laid out in name order.
  EXPECT_EQ(f.tensors[0].name, "alpha");
  EXPECT_EQ(f.tensors[3].name, "zeta");
  EXPECT_EQ(f.find("zeta")->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(st::to_float(*f.find("zeta"), "mem"), a);
  EXPECT_EQ(st::to_float(*f.find("alpha"), "mem"), b);
  EXPECT_EQ(st::to_float(*f.find("scalar"), "mem"), scalar);
  EXPECT_TRUE(st::to_float(*f.find("nothing"), "mem").empty());
  EXPECT_EQ(f.find("missing"), nullptr);
}

TEST(Safetensors, WriteIsAtomicAndEqualsSerialize) {
  testing::ScratchDir dir;
  const auto a = testing::random_floats(5, 3);
  std::vector<st::TensorF32> tensors{{"w", {5}, a, {}}};
  st::write(dir.file("m.safetensors"), tensors, {});
  EXPECT_EQ(testing::read_bytes(dir.file("m.safetensors")), st::serialize(tensors, {}));
  // A generated tensor is written like a stored one.
  std::vector<st::TensorF32> generated{
      {"w", {5}, {}, [&](std::span<float> out) { std::copy(a.begin(), a.end(), out.begin()); }}};
  EXPECT_EQ(st::serialize(generated, {}), st::serialize(tensors, {}));
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
}

TEST(Safetensors, WriterRefusesInconsistentTensors) {
  const std::vector<float> v(6, 1.0f);
  EXPECT_THROW(st::serialize({{"a", {2, 2}, v, {}}}, {}), Error);
  EXPECT_THROW(st::serialize({{"a", {6}, v, {}}, {"a", {6}, v, {}}}, {}), Error);
  EXPECT_THROW(st::serialize({{"__metadata__", {6}, v, {}}}, {}), Error);
  EXPECT_THROW(st::serialize({{"a", {-6}, v, {}}}, {}), Error);
}

TEST(Safetensors, ReadsHalfBfloatAndDoubleAsFloat) {
  // F16: 1, -2, smallest subnormal, 65504, +inf; BF16: 1, -5; F64: 1.5, -0.25.
  const uint16_t half[] = {0x3c00, 0xc000, 0x0001, 0x7bff, 0x7c00};
  const uint16_t bf[] = {0x3f80, 0xc0a0};
  const double dbl[] = {1.5, -0.25};
  std::string header =
      R"({"h":{"dtype":"F16","shape":[5],"data_offsets":[0,10]},)"
      R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[10,14]},)"
      R"("d":{"dtype":"F64","shape":[1,2],"data_offsets":[14,30]},)"
      R"("i":{"dtype":"I32","shape":[1],"data_offsets":[30,34]}})";
  std::vector<uint8_t> bytes = raw(header, 0);
  auto append = [&](const void* p, size_t n) {
    const uint8_t* c = static_cast<const uint8_t*>(p);
    bytes.insert(bytes.end(), c, c + n);
  };
  append(half, sizeof half), append(bf, sizeof bf), append(dbl, sizeof dbl);
  const int32_t i = 7;
  append(&i, 4);
  const st::File f = st::parse(bytes, "mem");
  const auto h = st::to_float(*f.find("h"), "mem");
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_EQ(h[1], -2.0f);
  EXPECT_EQ(h[2], std::ldexp(1.0f, -24));
  EXPECT_EQ(h[3], 65504.0f);
  EXPECT_TRUE(std::isinf(h[4]) && h[4] > 0);
  EXPECT_EQ(st::to_float(*f.find("b"), "mem"), (std::vector<float>{1.0f, -5.0f}));
  EXPECT_EQ(st::to_float(*f.find("d"), "mem"), (std::vector<float>{1.5f, -0.25f}));
  EXPECT_THROW(st::to_float(*f.find("i"), "mem"), Error);
}

const std::string kEntry = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";

TEST(Safetensors, RefusesBadLengthsAndJson) {
  expect_refused({1, 2, 3}, "too short");
  expect_refused(raw("{}", 0, 1000), "runs past the end");
  expect_refused(raw("{}", 0, uint64_t(1) << 40), "absurdly large");
  expect_refused(raw("{\"a\":", 0), "not valid JSON");
  expect_refused(raw("[1,2]", 0), "does not start with '{'");
  expect_refused(raw("{\"a\":{" + kEntry + "}}\x01", 8), "not valid JSON");
  expect_refused(raw("{\"a\":{\"dtype\":\"F32\",\"shape\":[[[2]]],\"data_offsets\":[0,8]}}", 8),
                 "nested too deeply");
}

TEST(Safetensors, RefusesBadEntries) {
  expect_refused(raw(R"({"a":5})", 0), "not an object");
  expect_refused(raw(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8), "missing dtype");
  expect_refused(raw(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8), "missing shape");
  expect_refused(raw(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "missing data_offsets");
  expect_refused(raw(R"({"a":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", 8),
                 "unknown dtype 'F17'");
  expect_refused(raw(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
                 "needs 12 bytes but data_offsets cover 8");
  expect_refused(raw(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
                 "invalid dimension -2");
  expect_refused(raw(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
                 "non-integer dimension");
  expect_refused(raw(R"({"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8),
                 "non-integer dimension");
  expect_refused(raw(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
                 "more than 2^64");
  expect_refused(raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
                 "end before they begin");
  expect_refused(raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", 8),
                 "two non-negative integers");
  expect_refused(raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8),
                 "unexpected key 'x'");
  expect_refused(raw(R"({"__metadata__":{"format":1}})", 0), "is not a string");
  expect_refused(raw(R"({"__metadata__":[]})", 0), "__metadata__ is not an object");
  expect_refused(raw("{\"a\":{" + kEntry + "},\"a\":{" + kEntry + "}}", 8), "lists 'a' twice");
}

TEST(Safetensors, RefusesOffsetsThatDoNotTileTheData) {
  const std::string b_at = R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":)";
  expect_refused(raw("{\"a\":{" + kEntry + "}}", 4), "run past the end of the 4-byte data section");
  expect_refused(raw("{\"a\":{" + kEntry + "}" + b_at + "[4,12]}}", 12), "overlaps tensor 'a'");
  expect_refused(raw("{\"a\":{" + kEntry + "}" + b_at + "[12,20]}}", 20),
                 "bytes 8..12 of the data section belong to no tensor");
  expect_refused(raw("{\"a\":{" + kEntry + "}}", 12),
                 "bytes 8..12 of the data section belong to no tensor");
  expect_refused(raw("{}", 4), "bytes 0..4");
  // The same two tensors, tiled correctly, are accepted.
  EXPECT_NO_THROW(st::parse(raw("{\"a\":{" + kEntry + "}" + b_at + "[8,16]}}", 16), "ok"));
}

}  // namespace test_safetensors
}  // namespace
}  // namespace lsgpt
