// Worker: one proxy event-loop thread with its own listeners (SO_REUSEPORT), clusters (balancer,
// outlier detector, retry policy, upstream pool) and client sessions. Share-nothing: other threads
// only post to it.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <boost/json/object.hpp>

#include "base/status.h"
#include "proxy/cluster.h"
#include "proxy/discovery.h"
#include "proxy/io_types.h"
#include "proxy/proxy_metrics.h"
#include "proxy/proxy_options.h"
#include "proxy/worker_context.h"

namespace haven::proxy {

class Worker {
 public:
  // `metrics` is parallel to opts.clusters.
  Worker(int index, const ProxyOptions& opts,
         const std::vector<std::unique_ptr<ClusterMetrics>>& metrics);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Binds listener i (in opts.listeners order) at `at`; call for every listener before Start.
  Status Bind(size_t listener, const tcp::endpoint& at);
  uint16_t bound_port(size_t listener) const;

  void Start();  // the thread
  void Stop();   // stops the loop and joins

  // Before Start: installs a cluster's first instance list directly (no thread yet).
  void SetEndpoints(size_t cluster, const EndpointSnapshot& snap);
  // From discovery: the worker switches the cluster to the new immutable list.
  void PostEndpoints(size_t cluster, EndpointSnapshot snap);
  // From the health checker: an instance of the cluster turned unhealthy or healthy again.
  void PostHealth(size_t cluster, std::string id, bool healthy);
  // Stops accepting and closes client connections that wait for their next request.
  void PostDrain();
  int inflight() const { return ctx_.inflight.load(); }
  // This worker's part of /status, delivered on its thread.
  void PostStatus(std::function<void(boost::json::object)> done);

 private:
  Task<void> AcceptLoop(ListenerRuntime& l);

  const ProxyOptions& opts_;
  std::unique_ptr<asio::io_context> ioc_ = std::make_unique<asio::io_context>(1);
  WorkerContext ctx_;
  std::vector<std::unique_ptr<Cluster>> clusters_;           // parallel to opts.clusters
  std::vector<std::unique_ptr<ListenerRuntime>> listeners_;  // parallel to opts.listeners
  std::thread thread_;
};

}  // namespace haven::proxy
