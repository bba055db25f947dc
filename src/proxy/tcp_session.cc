#include "proxy/tcp_session.h"

#include <array>
#include <functional>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/write.hpp>

#include "base/log.h"
#include "proxy/upstream_conn.h"

namespace haven::proxy {

namespace {

using namespace asio::experimental::awaitable_operators;  // NOLINT(google-build-using-namespace)

constexpr size_t kPumpBuffer = 16 << 10;

// Copies bytes from `from` to `to` until `from` ends; then half-closes `to`. Any error or an idle
// timeout closes both sockets, which ends the other direction too. Traffic either way keeps the
// connection alive: a write also moves the other direction's read deadline.
Task<void> Pump(Socket& from, SocketDeadline& from_deadline, Socket& to,
                SocketDeadline& to_deadline, int64_t idle_ms) {
  std::array<char, kPumpBuffer> buf;
  error_code ec;
  for (;;) {
    from_deadline.ExpireAfterMs(idle_ms);
    auto [rec, n] = co_await from.async_read_some(asio::buffer(buf), kAwait);
    if (rec == asio::error::eof) {
      to.shutdown(tcp::socket::shutdown_send, ec);
      co_return;
    }
    if (rec) break;
    to_deadline.ExpireAfterMs(idle_ms);
    auto [wec, wn] = co_await asio::async_write(to, asio::buffer(buf.data(), n), kAwait);
    if (wec) break;
  }
  from.close(ec);
  to.close(ec);
}

// A failed connect as outlier detection sees it: refused/reset means dead.
lb::Outcome ConnectOutcome(bool had_connection, const error_code& ec) {
  if (!had_connection) return lb::Outcome::kFailure;  // our own connection limit
  if (ec == asio::error::connection_refused || ec == asio::error::connection_reset) {
    return lb::Outcome::kConnectFailure;
  }
  return ec == asio::error::timed_out ? lb::Outcome::kTimeout : lb::Outcome::kFailure;
}

// Connects to an instance of the cluster, failing over to another at once when a connect fails.
// Returns the connection (and the pick it counts against), or nullptr when none could be reached.
Task<std::unique_ptr<UpstreamConn>> ConnectWithFailover(Cluster& c, std::optional<uint64_t> hash,
                                                        std::optional<Cluster::Picked>* picked) {
  Cluster::Tried tried;
  const int attempts = c.options().retry.max_attempts;
  for (int attempt = 1; attempt <= attempts; ++attempt) {
    MonoMs start = NowMs();
    auto p = c.Pick(start, tried, false, hash);
    if (!p) break;
    auto conn = c.NewConnection(*p);
    error_code ec = asio::error::no_buffer_space;
    if (conn)
      ec = co_await ConnectUpstream(*conn, p->endpoint(),
                                    SteadyAfterMs(c.options().connect_timeout_ms));
    if (!ec) {
      *picked = std::move(p);
      co_return conn;
    }
    c.Finish(*p, start, ConnectOutcome(conn != nullptr, ec));
    c.metrics().connect_errors->Inc();
    if (attempt > 1) c.metrics().failovers->Inc();
    HLOG_INFO("proxy_tcp_connect_failed", "cluster={} upstream={} error=\"{}\"", c.metrics().name,
              p->endpoint().id, ec.message());
    tried.push_back(p->endpoint().id);
  }
  co_return nullptr;
}

}  // namespace

Task<void> ServeTcpClient(WorkerContext& w, const ListenerRuntime& listener, Socket socket) {
  Cluster& c = *listener.route_clusters.front();
  c.metrics().tcp_connections->Inc();
  error_code ec;
  auto remote = socket.remote_endpoint(ec);
  std::optional<uint64_t> hash;
  if (c.options().policy == lb::Policy::kRingHash && !ec) {
    hash = std::hash<std::string>{}(remote.address().to_string());
  }
  std::optional<Cluster::Picked> picked;
  std::unique_ptr<UpstreamConn> up = co_await ConnectWithFailover(c, hash, &picked);
  if (!up) {
    HLOG_WARN("proxy_tcp_no_instance", "cluster={}", c.metrics().name);
    socket.close(ec);
    co_return;
  }
  socket.set_option(tcp::no_delay(true), ec);
  ++w.inflight;
  MonoMs start = NowMs();
  SocketDeadline client_deadline(socket);
  const int64_t idle = w.opts.idle_timeout_ms;
  co_await (Pump(socket, client_deadline, up->socket, up->deadline, idle) &&
            Pump(up->socket, up->deadline, socket, client_deadline, idle));
  c.Finish(*picked, start, lb::Outcome::kSuccess);
  --w.inflight;
}

}  // namespace haven::proxy
