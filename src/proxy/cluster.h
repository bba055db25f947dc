// Cluster: one worker's state for one cluster of upstream instances: its balancer, outlier
// detector, retry policy, circuit breaker, health marks and pool of idle upstream connections.
// Share-nothing: every worker has its own, touched only on the worker's thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <boost/json/object.hpp>

#include "base/clock.h"
#include "lb/balancer.h"
#include "lb/circuit_breaker.h"
#include "lb/outlier_detector.h"
#include "lb/retry_policy.h"
#include "lb/try_timeout.h"
#include "proxy/discovery.h"
#include "proxy/proxy_metrics.h"
#include "proxy/proxy_options.h"
#include "proxy/upstream_conn.h"

namespace haven::proxy {

MonoMs NowMs();

class Cluster {
 public:
  // An instance picked for one attempt. Holds the endpoint list it came from, so it stays valid
  // when discovery replaces the list meanwhile.
  struct Picked {
    std::shared_ptr<const std::vector<lb::Endpoint>> list;
    size_t index = 0;
    const lb::Endpoint& endpoint() const { return (*list)[index]; }
  };
  // Instances already tried by one request (a handful at most: max_attempts <= 10).
  using Tried = std::vector<std::string>;

  Cluster(const ClusterOptions& opts, ClusterMetrics& metrics, const Executor& ex, uint64_t seed);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  const ClusterOptions& options() const { return opts_; }
  ClusterMetrics& metrics() const { return m_; }
  lb::RetryPolicy& retry() { return retry_; }

  // Discovery delivered a new immutable list: instances gone get no new picks and their idle
  // connections close; attempts in flight finish (draining). An empty list after a non-empty one
  // keeps the last instances for panic picks only (the registry lists none passing: a failing
  // check may be stale, and a request's first try is better spent on one than on a 503 unasked).
  void SetEndpoints(const EndpointSnapshot& snap);
  // Active health checks: unhealthy = no picks; healthy again ends an outlier ejection too.
  void SetHealth(const std::string& id, bool healthy);
  // Shutdown: idle connections close and none are pooled any more.
  void Drain();

  // Picks an eligible instance (healthy, not ejected, under its limits) not in `tried`; with
  // `allow_tried` a tried one when no other is left. Counts the attempt as started.
  std::optional<Picked> Pick(MonoMs now, const Tried& tried, bool allow_tried,
                             std::optional<uint64_t> hash);
  // Reports a finished attempt to the balancer, the outlier detector, the adaptive per-try
  // timeout (successes) and the metrics.
  void Finish(const Picked& p, MonoMs start, lb::Outcome outcome);
  // The per-try timeout of attempt number `attempt` (1 = first) starting now: adaptive (a
  // multiple of the recent p99) when a timeout could still be retried; the configured per-try
  // timeout for a non-retryable request (cut short, it could only become a 504), for the last
  // attempt, and when the retry budget is spent, so that a slow but healthy answer still arrives.
  int64_t TryTimeoutMs(bool retryable, int attempt, MonoMs now) const;
  // Runs on the worker's loop until Drain(): every probe interval, probes the instances ejected
  // for connect errors or timeouts; one that answers is back in rotation at once.
  Task<void> ProbeLoop();
  // HTTP clusters probe with a GET; a cluster that a tcp listener uses only with a connect.
  void set_probe_http(bool http) { probe_http_ = http; }
  // True when some instance is at its request or connection limit (the 503 says so).
  bool AnyFull() const;

  // A pooled connection to the instance that is still open, or nullptr.
  std::unique_ptr<UpstreamConn> TakeIdle(const Picked& p);
  // Pools a connection after a complete keep-alive exchange (dropped when draining or gone).
  void ReturnIdle(const Picked& p, std::unique_ptr<UpstreamConn> conn);
  // A new unconnected connection counted against the instance's limit, or nullptr at the limit.
  std::unique_ptr<UpstreamConn> NewConnection(const Picked& p);

  // This worker's view of the instances for /status.
  boost::json::array StatusJson() const;

 private:
  // Per instance of the current list, parallel to list_.
  struct Slot {
    std::vector<std::unique_ptr<UpstreamConn>> idle;
    metrics::Histogram* latency = nullptr;
  };
  // Index of p's instance in the current list, or nullopt when it has left.
  std::optional<size_t> CurrentIndex(const Picked& p) const;
  // `panic`: ejected and unhealthy instances count too (no other is left).
  bool Eligible(size_t i, MonoMs now, const Tried& tried, bool allow_tried, bool panic) const;
  void StartProbes(MonoMs now);
  Task<void> Probe(lb::Endpoint ep);
  // True when the instance answers: connected, and for HTTP an HTTP status line came back.
  Task<bool> ProbeAnswers(const lb::Endpoint& ep);

  const ClusterOptions& opts_;
  ClusterMetrics& m_;
  Executor ex_;
  std::unique_ptr<lb::Balancer> balancer_;
  lb::OutlierDetector outlier_;
  lb::RetryPolicy retry_;
  lb::CircuitBreaker breaker_;
  lb::TryTimeout try_timeout_;
  std::unordered_set<std::string> probing_;  // ids with a probe in flight
  bool probe_http_ = true;
  std::shared_ptr<const std::vector<lb::Endpoint>> list_;  // = balancer_->endpoints()
  std::vector<Slot> slots_;
  std::unordered_map<std::string, size_t> index_of_;
  std::unordered_set<std::string> unhealthy_;
  bool last_resort_ = false;  // list_ is the last non-empty list; the registry lists none now
  std::unordered_map<std::string, metrics::Histogram*> latency_by_id_;
  bool draining_ = false;
  // Connections that outlive this object (in flight at shutdown) must not report to it.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace haven::proxy
