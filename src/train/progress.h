// The human-facing side of a long run: one progress line per logged step
// (step, loss, lr, tokens/s, ETA) and machine-readable metrics as JSON lines.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace lsgpt {

std::string format_duration(double seconds);  // "1h02m", "3m07s", "12.4s"

// One JSON record per line, each written through before write() returns. A
// failed write throws and cuts the file back to its last whole line, so a
// full disk never leaves a half record behind for readers of the file.
class MetricsLog {
 public:
  // Appends, so a resumed run continues the same file.
  MetricsLog(const std::string& path, bool append);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  void write(const nlohmann::json& record);
  // Closes and checks the close (some file systems report failed writes only there).
  void close();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t whole_bytes_ = 0;  // the file's size up to its last whole record
};

// Step time as an exponential moving average, for tokens/s and the ETA.
class Throughput {
 public:
  void add(double seconds_per_step);
  double seconds_per_step() const { return ema_; }

 private:
  double ema_ = 0;
  int count_ = 0;
};

}  // namespace lsgpt
