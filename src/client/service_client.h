// ServiceClient: the C++ SDK's discovery cache plus failover caller (pick, call, fail over, retry).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/status.h"
#include "lb/balancer.h"
#include "lb/endpoint.h"
#include "lb/outlier_detector.h"
#include "lb/retry_policy.h"
#include "lb/try_timeout.h"

namespace haven::client {

struct ClientOptions {
  // One registry node, or every node of a registry cluster, comma-separated (<= 16): discovery
  // watches through one and moves to the next when it fails (see RegistryFollower).
  std::string registry = "http://127.0.0.1:8500";
  lb::Policy policy = lb::Policy::kLeastRequest;
  lb::RetryOptions retry;  // attempts, per-try/overall timeouts, backoff, budget
  // Retryable requests: per-try timeout = multiplier x recent p99 within [floor, the per-try
  // timeout] (ceiling_ms is ignored: retry.per_try_timeout_ms is the ceiling).
  lb::TryTimeoutOptions try_timeout;
  lb::OutlierOptions outlier;      // one refused/reset connection ejects by default
  int64_t watch_wait_ms = 60'000;  // blocking query wait
  // Instances ejected for connect errors or timeouts are probed this often by one background
  // thread (GET probe_path; any answer ends the ejection). 0 = no probes.
  int64_t probe_interval_ms = 50;
  int64_t probe_timeout_ms = 250;
  std::string probe_path = "/";
};

struct Request {
  std::string method = "GET";
  std::string target = "/";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  bool retryable = false;  // retry like an idempotent request even if the method is not
};

struct Response {
  int status = 0;
  std::string body;
  std::string endpoint_id;  // the instance that answered
  int attempts = 0;         // 1 = answered by the first try
};

// Thread-safe. One discovery watcher thread per service used, one prober thread; a small
// keep-alive connection pool per instance.
class ServiceClient {
 public:
  explicit ServiceClient(ClientOptions opts);
  ~ServiceClient();  // stops watcher threads (bounded wait)
  ServiceClient(const ServiceClient&) = delete;
  ServiceClient& operator=(const ServiceClient&) = delete;

  // The passing instances of `service` (discovery cache fed by a blocking query per service,
  // started on first use; the first call waits for the first answer up to the per-try timeout).
  Result<std::vector<lb::Endpoint>> Instances(const std::string& service);
  // Picks an instance with the balancer and fails over with the retry policy (active failover on
  // connect errors, wait-based retries for idempotent requests on 502/503/504/timeouts, outlier
  // ejection). When every instance is ejected, the first try goes to one of them anyway (panic,
  // as the proxy's): a stale ejection costs no call, a dead instance refuses at once.
  // Unavailable("no healthy instance for service X") when the registry lists none.
  Result<Response> Call(const std::string& service, const Request& req);
  // The ids of the instances of `service` ejected now (empty for a service not used yet).
  std::vector<std::string> EjectedInstances(const std::string& service);
  // Calls whose first try went to an ejected instance because every instance was ejected.
  uint64_t PanicPicks(const std::string& service);

 private:
  struct Impl;  // defined in the .cc: keeps threads, locks and the HTTP client out of this header
  std::unique_ptr<Impl> impl_;
};

}  // namespace haven::client
