// HealthChecker: the proxy's active health checks of one static cluster: GETs the health path on
// every upstream every interval on its own loop thread, and reports an upstream that crossed a
// threshold. Its state is touched only on that thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lb/endpoint.h"
#include "net/io_runtime.h"
#include "net/probe.h"
#include "proxy/proxy_metrics.h"
#include "proxy/proxy_options.h"

namespace haven::proxy {

class HealthChecker {
 public:
  using OnChange = std::function<void(const std::string& id, bool healthy)>;

  HealthChecker(const HealthCheckOptions& opts, const std::vector<lb::Endpoint>& eps,
                ClusterMetrics& m, OnChange on_change);
  ~HealthChecker();  // Stop()s

  void Start();
  void Stop();  // after it returns no result is reported any more

 private:
  struct Target {
    lb::Endpoint ep;
    std::string url;
    bool healthy = true;   // until checks say otherwise: traffic flows from the start
    int passes = 0;        // in a row
    int fails = 0;         // in a row
    bool probing = false;  // a slow upstream gets no second probe on top of the first
  };

  void Tick();
  void OnResult(size_t i, const net::ProbeResult& r);

  const HealthCheckOptions& opts_;
  ClusterMetrics& m_;
  OnChange on_change_;
  std::vector<Target> targets_;
  std::shared_ptr<net::Timer> timer_;
  std::atomic<bool> stopped_{false};
  net::IoRuntime io_{1};  // last: stopped and destroyed before the state its handlers touch
};

}  // namespace haven::proxy
