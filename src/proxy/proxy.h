// ProxyServer: the `haven proxy` data plane: HTTP/1.1 and TCP listeners on share-nothing worker
// threads, routing to clusters of upstream instances with load balancing and failover, plus the
// registry discovery, active health checks and the admin port around them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "proxy/proxy_options.h"

namespace haven::proxy {

class ProxyServer {
 public:
  explicit ProxyServer(ProxyOptions opts);
  ~ProxyServer();  // Shutdown(0)s
  ProxyServer(const ProxyServer&) = delete;
  ProxyServer& operator=(const ProxyServer&) = delete;

  // Validates the options, binds every listener (SO_REUSEPORT, one socket per worker) and the
  // admin port, starts discovery (waiting, bounded, for each registry cluster's first list), the
  // workers and the health checks.
  Status Start();
  std::string address() const;                 // the first listener as bound: "127.0.0.1:PORT"
  std::vector<std::string> addresses() const;  // every listener, in options order
  std::string admin_address() const;           // "" without an admin port
  // Stops accepting, lets in-flight requests finish within deadline_ms, then stops the workers.
  // Idempotent.
  void Shutdown(int64_t deadline_ms);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Runs a proxy until SIGTERM/SIGINT, then drains it; returns the process exit code.
int RunProxy(const ProxyOptions& opts);

}  // namespace haven::proxy
