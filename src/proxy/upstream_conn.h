// UpstreamConn: one keep-alive connection from a proxy worker to an upstream instance, with its
// read buffer and deadline. Counted against the instance's connection limit while it exists.
#pragma once

#include <functional>
#include <string>

#include <boost/beast/core/flat_buffer.hpp>

#include "lb/endpoint.h"
#include "proxy/io_types.h"
#include "proxy/socket_deadline.h"

namespace haven::proxy {

struct UpstreamConn {
  UpstreamConn(const Executor& ex, std::function<void()> on_close)
      : socket(ex), deadline(socket), on_close_(std::move(on_close)) {}
  ~UpstreamConn() {
    if (on_close_) on_close_();
  }
  UpstreamConn(const UpstreamConn&) = delete;
  UpstreamConn& operator=(const UpstreamConn&) = delete;

  Socket socket;
  SocketDeadline deadline;
  boost::beast::flat_buffer buf;  // response bytes read but not yet forwarded
  SteadyTime idle_since{};        // when it went back to the pool

 private:
  std::function<void()> on_close_;
};

// Connects `conn` to the instance (an IP address, or a name resolved first) before `deadline`,
// with TCP_NODELAY; a timeout is reported as asio::error::timed_out.
Task<error_code> ConnectUpstream(UpstreamConn& conn, const lb::Endpoint& ep, SteadyTime deadline);

}  // namespace haven::proxy
