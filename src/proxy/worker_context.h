// WorkerContext: what a proxy worker shares with the client sessions running on its thread: the
// options, its clusters, drain state and counters. Touched only on the worker's thread, except the
// atomics.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <unordered_set>
#include <vector>

#include "proxy/cluster.h"
#include "proxy/io_types.h"
#include "proxy/proxy_options.h"
#include "proxy/router.h"

namespace haven::proxy {

// One listener as a worker serves it: routes resolved to the worker's clusters.
struct ListenerRuntime {
  const ListenerOptions* options = nullptr;
  Router router{{}};
  std::vector<Cluster*> route_clusters;  // parallel to options->routes
  std::unique_ptr<Acceptor> acceptor;
};

struct WorkerContext {
  WorkerContext(const ProxyOptions& o, int i, Executor e) : opts(o), index(i), ex(e) {}
  const ProxyOptions& opts;
  int index;
  Executor ex;
  bool draining = false;
  std::unordered_set<Socket*> idle_clients;  // waiting for their next request: closed on drain
  size_t client_connections = 0;
  std::atomic<int> inflight{0};
};

}  // namespace haven::proxy
