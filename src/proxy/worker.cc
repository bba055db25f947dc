#include "proxy/worker.h"

#include <algorithm>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/json.hpp>

#include "base/log.h"
#include "proxy/http_session.h"
#include "proxy/tcp_session.h"

namespace haven::proxy {

namespace {

// Completion of a detached coroutine: logs an escaped exception instead of terminating.
auto Detached(const char* what) {
  return [what](const std::exception_ptr& e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      HLOG_WARN("proxy_task_failed", "task={} error=\"{}\"", what, ex.what());
    }
  };
}

// RAII: counts a client connection for the limit and /status.
struct ConnectionCount {
  size_t& n;
  explicit ConnectionCount(size_t& c) : n(c) { ++n; }
  ~ConnectionCount() { --n; }
  ConnectionCount(const ConnectionCount&) = delete;
  ConnectionCount& operator=(const ConnectionCount&) = delete;
};

Task<void> Serve(WorkerContext& w, const ListenerRuntime& l, Socket socket) {
  ConnectionCount count(w.client_connections);
  if (l.options->mode == ListenerMode::kTcp) {
    co_await ServeTcpClient(w, l, std::move(socket));
  } else {
    co_await ServeHttpClient(w, l, std::move(socket));
  }
}

}  // namespace

Worker::Worker(int index, const ProxyOptions& opts,
               const std::vector<std::unique_ptr<ClusterMetrics>>& metrics)
    : opts_(opts), ctx_(opts, index, ioc_->get_executor()) {
  for (size_t i = 0; i < opts.clusters.size(); ++i) {
    clusters_.push_back(std::make_unique<Cluster>(opts.clusters[i], *metrics[i],
                                                  ioc_->get_executor(),
                                                  static_cast<uint64_t>(index) * 7919 + i));
  }
  for (const ListenerOptions& lo : opts.listeners) {
    auto l = std::make_unique<ListenerRuntime>();
    l->options = &lo;
    l->router = Router(lo.routes);
    for (const RouteOptions& r : lo.routes) {
      auto it = std::find_if(opts.clusters.begin(), opts.clusters.end(),
                             [&](const ClusterOptions& c) { return c.name == r.cluster; });
      // Validated before: every route names a cluster.
      l->route_clusters.push_back(clusters_[it - opts.clusters.begin()].get());
    }
    if (lo.mode == ListenerMode::kTcp) {
      for (Cluster* c : l->route_clusters) c->set_probe_http(false);
    }
    listeners_.push_back(std::move(l));
  }
}

Worker::~Worker() {
  Stop();
  for (auto& c : clusters_) c->Drain();  // pooled sockets close while their io_context exists
  for (auto& l : listeners_) l->acceptor.reset();
  ioc_.reset();  // destroys suspended sessions while the state they touch still exists
}

Status Worker::Bind(size_t listener, const tcp::endpoint& at) {
  auto& acc = listeners_[listener]->acceptor;
  acc = std::make_unique<Acceptor>(ioc_->get_executor());
  error_code ec;
  acc->open(at.protocol(), ec);
  if (!ec) acc->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) {
    acc->set_option(asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>(true), ec);
  }
  if (!ec) acc->bind(at, ec);
  if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return Status::IoError("listen on " + at.address().to_string() + ":" +
                           std::to_string(at.port()) + ": " + ec.message());
  }
  return Status::Ok();
}

uint16_t Worker::bound_port(size_t listener) const {
  return listeners_[listener]->acceptor->local_endpoint().port();
}

void Worker::Start() {
  for (auto& l : listeners_) asio::co_spawn(*ioc_, AcceptLoop(*l), Detached("accept"));
  for (auto& c : clusters_) asio::co_spawn(*ioc_, c->ProbeLoop(), Detached("probe"));
  thread_ = std::thread([this] { ioc_->run(); });
}

void Worker::Stop() {
  if (ioc_) ioc_->stop();
  if (thread_.joinable()) thread_.join();
}

Task<void> Worker::AcceptLoop(ListenerRuntime& l) {
  const size_t limit =
      std::max<size_t>(1, opts_.max_client_connections / std::max(1, opts_.threads));
  while (l.acceptor && l.acceptor->is_open()) {
    auto [ec, socket] = co_await l.acceptor->async_accept(kAwait);
    if (ec) {
      if (ec == asio::error::operation_aborted || !l.acceptor->is_open()) co_return;
      HLOG_WARN("proxy_accept_error", "worker={} error=\"{}\"", ctx_.index, ec.message());
      continue;
    }
    if (ctx_.client_connections >= limit) {
      HLOG_WARN("proxy_connection_limit", "worker={} limit={}", ctx_.index, limit);
      continue;  // the socket closes as it goes out of scope
    }
    asio::co_spawn(*ioc_, Serve(ctx_, l, std::move(socket)), Detached("client"));
  }
}

void Worker::SetEndpoints(size_t cluster, const EndpointSnapshot& snap) {
  clusters_[cluster]->SetEndpoints(snap);
}

void Worker::PostEndpoints(size_t cluster, EndpointSnapshot snap) {
  asio::post(*ioc_, [this, cluster, snap = std::move(snap)] { SetEndpoints(cluster, snap); });
}

void Worker::PostHealth(size_t cluster, std::string id, bool healthy) {
  asio::post(*ioc_, [this, cluster, id = std::move(id), healthy] {
    clusters_[cluster]->SetHealth(id, healthy);
  });
}

void Worker::PostDrain() {
  asio::post(*ioc_, [this] {
    ctx_.draining = true;
    error_code ec;
    for (auto& l : listeners_) {
      if (l->acceptor) l->acceptor->close(ec);
    }
    for (IdleClient& c : ctx_.idle_clients) c.socket->close(ec);
    for (auto& c : clusters_) c->Drain();
  });
}

void Worker::PostStatus(std::function<void(boost::json::object)> done) {
  asio::post(*ioc_, [this, done = std::move(done)] {
    boost::json::object o;
    o["worker"] = ctx_.index;
    o["inflight"] = ctx_.inflight.load();
    o["client_connections"] = ctx_.client_connections;
    boost::json::object clusters;
    for (size_t i = 0; i < clusters_.size(); ++i) {
      clusters[opts_.clusters[i].name] = clusters_[i]->StatusJson();
    }
    o["clusters"] = std::move(clusters);
    boost::json::object try_timeouts;  // the adaptive per-try timeout each cluster uses now
    for (size_t i = 0; i < clusters_.size(); ++i) {
      try_timeouts[opts_.clusters[i].name] = clusters_[i]->TryTimeoutMs(true, 1, NowMs());
    }
    o["try_timeout_ms"] = std::move(try_timeouts);
    done(std::move(o));
  });
}

}  // namespace haven::proxy
