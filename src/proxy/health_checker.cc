#include "proxy/health_checker.h"

#include <algorithm>

#include "base/log.h"

namespace haven::proxy {

HealthChecker::HealthChecker(const HealthCheckOptions& opts, const std::vector<lb::Endpoint>& eps,
                             ClusterMetrics& m, OnChange on_change)
    : opts_(opts), m_(m), on_change_(std::move(on_change)) {
  for (const auto& e : eps) {
    targets_.push_back({e, "http://" + e.host + ":" + std::to_string(e.port) + opts.path});
  }
}

HealthChecker::~HealthChecker() { Stop(); }

void HealthChecker::Start() {
  io_.Start();
  io_.Post([this] { Tick(); });
}

void HealthChecker::Stop() {
  stopped_ = true;
  io_.Stop();
}

void HealthChecker::Tick() {
  if (stopped_) return;
  for (size_t i = 0; i < targets_.size(); ++i) {
    Target& t = targets_[i];
    if (t.probing) continue;
    t.probing = true;
    net::ProbeHttp(io_, "GET", t.url, {}, false, opts_.timeout_ms,
                   [this, i](const net::ProbeResult& r) { OnResult(i, r); });
  }
  timer_ = io_.RunAfter(opts_.interval_ms, [this] { Tick(); });
}

void HealthChecker::OnResult(size_t i, const net::ProbeResult& r) {
  Target& t = targets_[i];
  t.probing = false;
  if (stopped_) return;
  bool pass = r.status == "passing";
  (pass ? m_.health_pass : m_.health_fail)->Inc();
  if (pass) {
    t.fails = 0;
    t.passes = std::min(t.passes + 1, kMaxHealthThreshold);
    if (t.healthy || t.passes < opts_.healthy_threshold) return;
    t.healthy = true;
    HLOG_INFO("proxy_upstream_healthy", "cluster={} upstream={} passes={}", m_.name, t.ep.id,
              t.passes);
  } else {
    t.passes = 0;
    t.fails = std::min(t.fails + 1, kMaxHealthThreshold);
    if (!t.healthy || t.fails < opts_.unhealthy_threshold) return;
    t.healthy = false;
    HLOG_WARN("proxy_upstream_unhealthy", "cluster={} upstream={} fails={} output=\"{}\"", m_.name,
              t.ep.id, t.fails, r.output);
  }
  on_change_(t.ep.id, t.healthy);
}

}  // namespace haven::proxy
