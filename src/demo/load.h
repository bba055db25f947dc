// The demo's load generator: keep-alive connections to the proxy, each a thread mixing writes
// (PUT of a new key) and reads (GET of a key it wrote, checking the value), remembering every
// acknowledged write for the final data check.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace haven::demo {

// Latencies in geometric buckets (8 per power of two: a percentile is within 9% of the truth),
// lock-free so that every load thread records into one.
class LatencyHistogram {
 public:
  static constexpr int kBuckets = 8 * 27;  // up to 2^27 us: about 134 s
  using Counts = std::array<uint64_t, kBuckets>;

  void Record(int64_t micros);
  Counts Snapshot() const;
  // The q-quantile (0..1) in milliseconds of `counts` (0 when empty): the bucket's upper bound.
  static double QuantileMs(const Counts& counts, double q);
  static Counts Minus(const Counts& a, const Counts& b);

 private:
  std::array<std::atomic<uint64_t>, kBuckets> counts_{};
};

// A write the proxy answered 200: it must be in that service's database at the end.
struct AckedWrite {
  int service = 0;
  std::string key;
  std::string value;
};

struct LoadOptions {
  std::string proxy = "127.0.0.1:8080";  // HOST:PORT
  int services = 100;
  int concurrency = 32;
  double write_fraction = 0.5;
  uint64_t seed = 1;
  int64_t request_timeout_ms = 30000;
};

class LoadGenerator {
 public:
  explicit LoadGenerator(LoadOptions options);
  ~LoadGenerator();  // Stop()s
  LoadGenerator(const LoadGenerator&) = delete;
  LoadGenerator& operator=(const LoadGenerator&) = delete;

  void Start();
  // Stops and joins every connection (each finishes its request in flight, bounded by its timeout).
  void Stop();

  uint64_t requests() const { return requests_.load(); }
  uint64_t failures() const { return failures_.load(); }
  uint64_t writes() const { return writes_.load(); }
  uint64_t reads() const { return reads_.load(); }
  const LatencyHistogram& latency() const { return latency_; }
  // After Stop(): every acknowledged write, and up to 20 failure descriptions.
  std::vector<AckedWrite> acked() const;
  std::vector<std::string> failure_samples() const;

 private:
  void RunConnection(int index);
  void RecordFailure(std::string what);

  LoadOptions options_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
  std::vector<std::vector<AckedWrite>> acked_;  // one per connection, touched only by its thread
  std::atomic<uint64_t> requests_{0}, failures_{0}, writes_{0}, reads_{0};
  LatencyHistogram latency_;
  mutable std::mutex samples_mu_;
  std::vector<std::string> samples_;
};

}  // namespace haven::demo
