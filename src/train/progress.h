// The human-facing side of a long run: one progress line per logged step
// (step, loss, lr, tokens/s, ETA) and machine-readable metrics as JSON lines.
#pragma once

#include <chrono>
#include <cstdio>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace lsgpt {

std::string format_duration(double seconds);  // "1h02m", "3m07s", "12.4s"

class MetricsLog {
 public:
  // Appends, so a resumed run continues the same file.
  MetricsLog(const std::string& path, bool append);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  void write(const nlohmann::json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
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
