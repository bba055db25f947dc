// WorkerContext: what a proxy worker shares with the client sessions running on its thread: the
// options, its clusters, drain state and counters. Touched only on the worker's thread, except the
// atomics.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include <boost/intrusive/list.hpp>

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

// A client connection waiting for its next request: a draining worker closes it. Linked into the
// worker's list without an allocation; it unlinks itself when destroyed.
struct IdleClient
    : boost::intrusive::list_base_hook<boost::intrusive::link_mode<boost::intrusive::auto_unlink>> {
  Socket* socket = nullptr;
};
using IdleClients = boost::intrusive::list<IdleClient, boost::intrusive::constant_time_size<false>>;

struct WorkerContext {
  WorkerContext(const ProxyOptions& o, int i, Executor e) : opts(o), index(i), ex(std::move(e)) {}
  const ProxyOptions& opts;
  int index;
  Executor ex;
  bool draining = false;
  IdleClients idle_clients;
  size_t client_connections = 0;
  std::atomic<int> inflight{0};
};

}  // namespace haven::proxy
