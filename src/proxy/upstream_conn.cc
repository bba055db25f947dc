#include "proxy/upstream_conn.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/basic_resolver.hpp>

namespace haven::proxy {

Task<error_code> ConnectUpstream(UpstreamConn& conn, const lb::Endpoint& ep, SteadyTime deadline) {
  conn.deadline.ExpireAt(deadline);
  error_code ec;
  auto addr = asio::ip::make_address(ep.host, ec);
  if (!ec) {
    auto [cec] = co_await conn.socket.async_connect(tcp::endpoint(addr, ep.port), kAwait);
    ec = cec;
  } else {
    asio::ip::basic_resolver<tcp, Executor> resolver(conn.socket.get_executor());
    auto [rec, results] = co_await resolver.async_resolve(ep.host, std::to_string(ep.port), kAwait);
    ec = rec;
    if (!ec) {
      auto [cec, at] = co_await asio::async_connect(conn.socket, results, kAwait);
      ec = cec;
    }
  }
  if (ec == asio::error::operation_aborted && conn.deadline.expired()) ec = asio::error::timed_out;
  if (!ec) conn.socket.set_option(tcp::no_delay(true), ec);
  co_return ec;
}

}  // namespace haven::proxy
