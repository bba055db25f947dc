#include "demo/load.h"

#include <bit>
#include <chrono>
#include <cmath>
#include <random>

#include <fmt/format.h>

#include "demo/layout.h"
#include "net/http_client.h"

namespace haven::demo {

namespace {

constexpr size_t kMaxSamples = 20;

int BucketOf(int64_t micros) {
  if (micros < 1) micros = 1;
  int b = static_cast<int>(std::floor(std::log2(static_cast<double>(micros)) * 8));
  return std::min(b, LatencyHistogram::kBuckets - 1);
}

}  // namespace

void LatencyHistogram::Record(int64_t micros) {
  counts_[BucketOf(micros)].fetch_add(1, std::memory_order_relaxed);
}

LatencyHistogram::Counts LatencyHistogram::Snapshot() const {
  Counts c{};
  for (int i = 0; i < kBuckets; ++i) c[i] = counts_[i].load(std::memory_order_relaxed);
  return c;
}

LatencyHistogram::Counts LatencyHistogram::Minus(const Counts& a, const Counts& b) {
  Counts c{};
  for (int i = 0; i < kBuckets; ++i) c[i] = a[i] >= b[i] ? a[i] - b[i] : 0;
  return c;
}

double LatencyHistogram::QuantileMs(const Counts& counts, double q) {
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  if (total == 0) return 0;
  const auto rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(total)));
  uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += counts[i];
    if (seen >= rank && counts[i] > 0) return std::exp2((i + 1) / 8.0) / 1000.0;
  }
  return std::exp2(kBuckets / 8.0) / 1000.0;
}

LoadGenerator::LoadGenerator(LoadOptions options) : options_(std::move(options)) {}

LoadGenerator::~LoadGenerator() { Stop(); }

void LoadGenerator::Start() {
  acked_.resize(options_.concurrency);
  for (int i = 0; i < options_.concurrency; ++i) {
    threads_.emplace_back([this, i] { RunConnection(i); });
  }
}

void LoadGenerator::Stop() {
  stop_ = true;
  for (auto& t : threads_) t.join();
  threads_.clear();
}

void LoadGenerator::RecordFailure(std::string what) {
  failures_++;
  while (!what.empty() && (what.back() == '\n' || what.back() == ' ')) what.pop_back();
  std::lock_guard lock(samples_mu_);
  if (samples_.size() < kMaxSamples) samples_.push_back(std::move(what));
}

void LoadGenerator::RunConnection(int index) {
  std::mt19937_64 rng(options_.seed * 1000003 + index);
  std::uniform_int_distribution<int> pick_service(0, options_.services - 1);
  std::uniform_real_distribution<double> coin(0, 1);
  net::HttpClient http("http://" + options_.proxy, options_.request_timeout_ms);
  std::vector<AckedWrite>& mine = acked_[index];
  uint64_t seq = 0;
  while (!stop_.load()) {
    const bool write = mine.empty() || coin(rng) < options_.write_fraction;
    AckedWrite w;
    if (write) {
      w = {pick_service(rng), fmt::format("c{}-{}", index, seq++), fmt::format("{:016x}", rng())};
    } else {
      w = mine[std::uniform_int_distribution<size_t>(0, mine.size() - 1)(rng)];
    }
    const std::string target = fmt::format("/{}/records/{}", ServiceName(w.service), w.key);
    const auto start = std::chrono::steady_clock::now();
    auto r = http.Request(write ? "PUT" : "GET", target, write ? w.value : "");
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                        std::chrono::steady_clock::now() - start)
                        .count();
    latency_.Record(us);
    requests_++;
    (write ? writes_ : reads_)++;
    if (!r.ok()) {
      RecordFailure(fmt::format("{} {}: {}", write ? "PUT" : "GET", target, r.status().ToString()));
    } else if (r->status != 200) {
      RecordFailure(fmt::format("{} {}: HTTP {} {}", write ? "PUT" : "GET", target, r->status,
                                r->body.substr(0, 200)));
    } else if (write) {
      mine.push_back(std::move(w));
    } else if (r->body != w.value) {
      RecordFailure(
          fmt::format("GET {}: read \"{}\", wrote \"{}\"", target, r->body.substr(0, 64), w.value));
    }
  }
}

std::vector<AckedWrite> LoadGenerator::acked() const {
  std::vector<AckedWrite> all;
  for (const auto& v : acked_) all.insert(all.end(), v.begin(), v.end());
  return all;
}

std::vector<std::string> LoadGenerator::failure_samples() const {
  std::lock_guard lock(samples_mu_);
  return samples_;
}

}  // namespace haven::demo
