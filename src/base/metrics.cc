#include "base/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace haven::metrics {

namespace {

std::string Escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

// Renders {a="1",b="2"} (empty string for no labels); `extra` is appended (for le="...").
std::string LabelText(const Labels& labels, const std::string& extra = "") {
  if (labels.empty() && extra.empty()) return "";
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out += ",";
    out += k + "=\"" + Escape(v) + "\"";
    first = false;
  }
  if (!extra.empty()) out += (first ? "" : ",") + extra;
  return out + "}";
}

std::string Key(const Labels& labels) { return LabelText(labels); }

std::string FormatDouble(double v) { return fmt::format("{}", v); }

// Inverse of LabelText for the stored key: we keep the rendered text and re-split only for
// histograms, which need the le label merged in.
std::string MergeLe(const std::string& key, const std::string& le) {
  std::string extra = "le=\"" + le + "\"";
  if (key.empty()) return "{" + extra + "}";
  return key.substr(0, key.size() - 1) + "," + extra + "}";
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i] = 0;
}

void Histogram::Observe(double v) {
  size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  double old = sum_.load(std::memory_order_relaxed);
  while (!sum_.compare_exchange_weak(old, old + v, std::memory_order_relaxed)) {
  }
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::BucketCounts() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  for (size_t i = 0; i < out.size(); ++i) out[i] = buckets_[i].load(std::memory_order_relaxed);
  return out;
}

std::vector<double> LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
}

Registry& Registry::Default() {
  static Registry* r = new Registry();
  return *r;
}

Registry::Family& Registry::FamilyFor(const std::string& name, const std::string& type,
                                      const std::string& help) {
  auto& f = families_[name];
  if (f.type.empty()) {
    f.type = type;
    f.help = help;
  }
  return f;
}

Counter& Registry::GetCounter(const std::string& name, const std::string& help,
                              const Labels& labels) {
  std::lock_guard lock(mu_);
  auto& slot = FamilyFor(name, "counter", help).counters[Key(labels)];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

Gauge& Registry::GetGauge(const std::string& name, const std::string& help, const Labels& labels) {
  std::lock_guard lock(mu_);
  auto& slot = FamilyFor(name, "gauge", help).gauges[Key(labels)];
  if (!slot) slot = std::make_unique<Gauge>();
  return *slot;
}

Histogram& Registry::GetHistogram(const std::string& name, const std::string& help,
                                  const Labels& labels, std::vector<double> bounds) {
  std::lock_guard lock(mu_);
  auto& slot = FamilyFor(name, "histogram", help).histograms[Key(labels)];
  if (!slot) slot = std::make_unique<Histogram>(std::move(bounds));
  return *slot;
}

void Registry::SetCallbackGauge(const std::string& name, const std::string& help,
                                const Labels& labels, std::function<double()> fn) {
  std::lock_guard lock(mu_);
  FamilyFor(name, "gauge", help).callbacks[Key(labels)] = std::move(fn);
}

void Registry::SetCallbackFamily(const std::string& name, const std::string& help,
                                 const std::string& type, std::function<Samples()> samples) {
  std::lock_guard lock(mu_);
  FamilyFor(name, type, help).samples = std::move(samples);
}

std::string Registry::RenderPrometheus() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& [name, f] : families_) {
    out += "# HELP " + name + " " + f.help + "\n# TYPE " + name + " " + f.type + "\n";
    for (const auto& [k, c] : f.counters) out += name + k + " " + std::to_string(c->Value()) + "\n";
    for (const auto& [k, g] : f.gauges) out += name + k + " " + FormatDouble(g->Value()) + "\n";
    for (const auto& [k, fn] : f.callbacks) out += name + k + " " + FormatDouble(fn()) + "\n";
    if (f.samples) {
      for (const auto& [labels, v] : f.samples()) {
        out += name + Key(labels) + " " + FormatDouble(v) + "\n";
      }
    }
    for (const auto& [k, h] : f.histograms) {
      auto counts = h->BucketCounts();
      uint64_t cum = 0;
      for (size_t i = 0; i < counts.size(); ++i) {
        cum += counts[i];
        std::string le = i < h->bounds().size() ? FormatDouble(h->bounds()[i]) : "+Inf";
        out += name + "_bucket" + MergeLe(k, le) + " " + std::to_string(cum) + "\n";
      }
      out += name + "_sum" + k + " " + FormatDouble(h->Sum()) + "\n";
      out += name + "_count" + k + " " + std::to_string(h->Count()) + "\n";
    }
  }
  return out;
}

}  // namespace haven::metrics
