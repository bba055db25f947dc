#include "proxy/proxy.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <boost/asio.hpp>
#include <boost/asio/experimental/as_tuple.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include "base/log.h"
#include "base/metrics.h"
#include "net/http_server.h"
#include "net/io_runtime.h"
#include "net/probe.h"
#include "proxy/discovery.h"
#include "proxy/http_util.h"

namespace haven::proxy {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using beast::error_code;
constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);

namespace {

MonoMs NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Process-wide counters; every worker updates the same atomics.
struct ProxyMetrics {
  metrics::Counter* by_class[6] = {};  // index = status / 100 (0 unused)
  metrics::Counter* retries;
  metrics::Counter* failovers;
  metrics::Counter* ejections;
  metrics::Counter* connect_errors;
  metrics::Histogram* latency;
  metrics::Counter* health_pass;
  metrics::Counter* health_fail;

  ProxyMetrics() {
    auto& r = metrics::Registry::Default();
    for (int c = 1; c <= 5; ++c) {
      by_class[c] = &r.GetCounter("haven_proxy_requests_total", "Client requests by status class",
                                  {{"code", std::to_string(c) + "xx"}});
    }
    retries = &r.GetCounter("haven_proxy_retries_total", "Upstream attempts after the first");
    failovers = &r.GetCounter("haven_proxy_failovers_total",
                              "Attempts moved to another instance at once (active failover)");
    ejections = &r.GetCounter("haven_proxy_ejections_total", "Outlier ejections");
    connect_errors =
        &r.GetCounter("haven_proxy_upstream_connect_errors_total", "Upstream connects that failed");
    latency = &r.GetHistogram("haven_proxy_request_duration_seconds",
                              "Client request latency through the proxy");
    health_pass =
        &r.GetCounter("haven_proxy_health_checks_total",
                      "Active health checks of upstreams by result", {{"result", "pass"}});
    health_fail =
        &r.GetCounter("haven_proxy_health_checks_total",
                      "Active health checks of upstreams by result", {{"result", "fail"}});
  }
  void CountResponse(unsigned status) {
    unsigned c = status / 100;
    if (c >= 1 && c <= 5) by_class[c]->Inc();
  }
};

// One attempt's outcome: a response, or why there is none.
struct Attempt {
  std::optional<lb::AttemptFailure> failure;
  bool request_sent = false;
  std::optional<Response> response;
};

// Parsed listen address.
struct HostPort {
  std::string host;
  uint16_t port = 0;
};

Result<HostPort> ParseListen(std::string_view text) {
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return Status::InvalidArgument("expected HOST:PORT");
  std::string_view port_text = text.substr(colon + 1);
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port > 65535) {
    return Status::InvalidArgument("bad port in \"" + std::string(text) + "\"");
  }
  return HostPort{std::string(text.substr(0, colon)), static_cast<uint16_t>(port)};
}

// True when an idle pooled connection was closed by the peer (or sent something unasked).
bool IdleConnectionDead(beast::tcp_stream& s) {
  pollfd p{};
  p.fd = s.socket().native_handle();
  p.events = POLLIN | POLLRDHUP;
  return ::poll(&p, 1, 0) != 0;
}

bool IsPeerClosed(const error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
         ec == http::error::partial_message;
}

// Completion of a detached coroutine: logs an escaped exception instead of terminating.
auto Detached(const char* what) {
  return [what](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      HLOG_WARN("proxy_task_failed", "task={} error=\"{}\"", what, ex.what());
    }
  };
}

}  // namespace

// One event loop thread with its own listener, balancer, outlier detector, retry policy and
// upstream pool. Everything below runs on the worker's thread only: no locks.
class Worker {
 public:
  Worker(int index, const ProxyOptions& opts, std::string service_label, ProxyMetrics& m)
      : index_(index),
        opts_(opts),
        service_label_(std::move(service_label)),
        m_(m),
        balancer_(lb::MakeBalancer(opts.policy, 0x9e3779b97f4a7c15ULL + index)),
        outlier_(opts.outlier),
        retry_(opts.retry, 0x2545f4914f6cdd1dULL + index),
        breaker_(opts.circuit) {}

  ~Worker() {
    Stop();
    pool_.clear();
    acceptor_.reset();
    ioc_.reset();  // destroys suspended coroutines while the state they touch still exists
  }

  Status Bind(const tcp::endpoint& at) {
    error_code ec;
    acceptor_.emplace(*ioc_);
    acceptor_->open(at.protocol(), ec);
    if (!ec) acceptor_->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) {
      acceptor_->set_option(asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>(true),
                            ec);
    }
    if (!ec) acceptor_->bind(at, ec);
    if (!ec) acceptor_->listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
      return Status::IoError("listen on " + at.address().to_string() + ":" +
                             std::to_string(at.port()) + ": " + ec.message());
    return Status::Ok();
  }
  uint16_t bound_port() const { return acceptor_->local_endpoint().port(); }

  void Start() {
    asio::co_spawn(*ioc_, AcceptLoop(), Detached("accept"));
    thread_ = std::thread([this] { ioc_->run(); });
  }

  // Posted from discovery: the worker switches to the new immutable set.
  void PostEndpoints(EndpointSnapshot snap) {
    asio::post(*ioc_, [this, snap = std::move(snap)] { SetEndpoints(snap); });
  }
  void SetEndpoints(const EndpointSnapshot& snap) {
    snapshot_ = snap;
    balancer_->SetEndpoints(*snap);
    outlier_.SetEndpoints(*snap);
    index_of_.clear();
    const auto& eps = balancer_->endpoints();
    for (size_t i = 0; i < eps.size(); ++i) index_of_[eps[i].id] = i;
    std::unordered_set<std::string> live;
    for (const auto& e : eps) live.insert(e.id);
    std::erase_if(pool_, [&](const auto& kv) { return !live.count(kv.first); });
  }

  // Posted from the health checker: an upstream turned unhealthy (no picks, pooled connections
  // dropped) or healthy again (eligible at once, its outlier ejection ended).
  void PostHealth(std::string id, bool healthy) {
    asio::post(*ioc_, [this, id = std::move(id), healthy] {
      if (healthy) {
        unhealthy_.erase(id);
        outlier_.Forgive(id, NowMs());
      } else {
        unhealthy_.insert(id);
        pool_.erase(id);
      }
    });
  }

  // Stops accepting and closes client connections that wait for their next request.
  void PostDrain() {
    asio::post(*ioc_, [this] {
      draining_ = true;
      error_code ec;
      if (acceptor_) acceptor_->close(ec);
      for (tcp::socket* s : idle_clients_) s->close(ec);
    });
  }
  int inflight() const { return inflight_.load(); }

  void Stop() {
    if (ioc_) ioc_->stop();
    if (thread_.joinable()) thread_.join();
  }

  // Fills this worker's part of /status (runs on the worker thread).
  void PostStatus(std::function<void(boost::json::object)> done) {
    asio::post(*ioc_, [this, done = std::move(done)] { done(StatusJson()); });
  }

 private:
  boost::json::object StatusJson() {
    boost::json::array eps;
    MonoMs now = NowMs();
    const auto& list = balancer_->endpoints();
    for (size_t i = 0; i < list.size(); ++i) {
      boost::json::object e;
      e["id"] = list[i].id;
      e["address"] = list[i].host + ":" + std::to_string(list[i].port);
      e["weight"] = list[i].weight;
      e["outstanding"] = balancer_->outstanding(i);
      e["ejected"] = outlier_.IsEjected(list[i].id, now);
      e["healthy"] = !unhealthy_.contains(list[i].id);
      e["pending"] = breaker_.pending(list[i].id);
      auto it = pool_.find(list[i].id);
      e["idle_connections"] = it == pool_.end() ? 0 : it->second.size();
      eps.push_back(std::move(e));
    }
    boost::json::object o;
    o["worker"] = index_;
    o["inflight"] = inflight_.load();
    o["client_connections"] = client_connections_;
    o["endpoints"] = std::move(eps);
    return o;
  }

  asio::awaitable<void> AcceptLoop() {
    size_t per_worker_limit =
        std::max<size_t>(1, opts_.max_client_connections / std::max(1, opts_.threads));
    while (acceptor_ && acceptor_->is_open()) {
      auto [ec, socket] = co_await acceptor_->async_accept(kTuple);
      if (ec) {
        if (ec == asio::error::operation_aborted || !acceptor_->is_open()) co_return;
        HLOG_WARN("proxy_accept_error", "worker={} error=\"{}\"", index_, ec.message());
        continue;
      }
      if (client_connections_ >= per_worker_limit) {
        HLOG_WARN("proxy_connection_limit", "worker={} limit={}", index_, per_worker_limit);
        continue;  // the socket closes as it goes out of scope
      }
      asio::co_spawn(*ioc_, ServeClient(std::move(socket)), Detached("client"));
    }
  }

  // RAII: counts a client connection for the limit and /status.
  struct ConnectionCount {
    size_t& n;
    explicit ConnectionCount(size_t& c) : n(c) { ++n; }
    ~ConnectionCount() { --n; }
  };

  // Waits for the first byte of the next request (idle timeout), registered as drainable.
  asio::awaitable<bool> AwaitNextRequest(beast::tcp_stream& stream, beast::flat_buffer& buf) {
    if (buf.size() > 0) co_return true;
    if (draining_) co_return false;
    tcp::socket* sock = &stream.socket();
    idle_clients_.insert(sock);
    stream.expires_after(std::chrono::milliseconds(opts_.idle_timeout_ms));
    auto [ec, n] = co_await stream.async_read_some(buf.prepare(4096), kTuple);
    idle_clients_.erase(sock);
    if (ec) co_return false;
    buf.commit(n);
    co_return true;
  }

  asio::awaitable<void> ServeClient(tcp::socket socket) {
    ConnectionCount count(client_connections_);
    error_code ec;
    auto remote = socket.remote_endpoint(ec);
    std::string client_ip = ec ? "unknown" : remote.address().to_string();
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buf;
    for (;;) {
      bool more = co_await AwaitNextRequest(stream, buf);
      if (!more) break;
      http::request_parser<http::string_body> parser;
      parser.header_limit(static_cast<uint32_t>(opts_.max_header_bytes));
      parser.body_limit(opts_.max_body_bytes);
      stream.expires_after(std::chrono::milliseconds(opts_.header_timeout_ms));
      auto [hec, hn] = co_await http::async_read_header(stream, buf, parser, kTuple);
      if (hec) {
        co_await ReplyToBadRequest(stream, hec);
        break;
      }
      if (beast::iequals(parser.get()[http::field::expect], "100-continue")) {
        http::response<http::empty_body> cont{http::status::continue_, 11};
        co_await http::async_write(stream, cont, kTuple);
      }
      auto [bec, bn] = co_await http::async_read(stream, buf, parser, kTuple);
      if (bec) {
        co_await ReplyToBadRequest(stream, bec);
        break;
      }
      Request req = parser.release();
      bool keep_alive = req.keep_alive();
      ++inflight_;
      MonoMs start = NowMs();
      Response res = co_await Forward(req, client_ip);
      bool head = req.method() == http::verb::head;
      keep_alive = keep_alive && !draining_;
      PrepareClientResponse(res, head, req.version(), keep_alive);
      m_.CountResponse(res.result_int());
      stream.expires_after(std::chrono::milliseconds(opts_.idle_timeout_ms));
      auto [wec, wn] = co_await WriteResponse(stream, res, head);
      m_.latency->Observe(static_cast<double>(NowMs() - start) / 1000.0);
      --inflight_;
      if (wec || !keep_alive) break;
    }
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream.socket().close(ec);
  }

  asio::awaitable<std::tuple<error_code, size_t>> WriteResponse(beast::tcp_stream& stream,
                                                                Response& res, bool head) {
    if (!head) co_return co_await http::async_write(stream, res, kTuple);
    http::response_serializer<http::string_body> sr(res);
    co_return co_await http::async_write_header(stream, sr, kTuple);
  }

  // 431 for headers over the limit, 413 for a body over it, 400 otherwise; then the connection
  // closes. A client that went away or timed out gets nothing.
  asio::awaitable<void> ReplyToBadRequest(beast::tcp_stream& stream, const error_code& ec) {
    if (IsPeerClosed(ec) || ec == beast::error::timeout || ec == asio::error::operation_aborted ||
        ec == asio::error::bad_descriptor) {
      co_return;
    }
    http::status status = http::status::bad_request;
    std::string msg = "malformed request: " + ec.message();
    if (ec == http::error::header_limit) {
      status = http::status::request_header_fields_too_large;
      msg = "request headers over " + std::to_string(opts_.max_header_bytes) + " bytes";
    } else if (ec == http::error::body_limit) {
      status = http::status::payload_too_large;
      msg = "request body over " + std::to_string(opts_.max_body_bytes) + " bytes";
    }
    HLOG_INFO("proxy_bad_request", "status={} error=\"{}\"", static_cast<int>(status),
              ec.message());
    Response res = ErrorResponse(status, msg, 11, false);
    m_.CountResponse(res.result_int());
    stream.expires_after(std::chrono::seconds(5));
    co_await http::async_write(stream, res, kTuple);
  }

  // Whether index i may take this attempt: healthy, not ejected, not at its limit, not tried yet
  // (unless `allow_tried`).
  bool Eligible(size_t i, MonoMs now, const std::unordered_set<std::string>& tried,
                bool allow_tried) {
    const auto& id = balancer_->endpoints()[i].id;
    return !unhealthy_.contains(id) && !outlier_.IsEjected(id, now) && !breaker_.IsFull(id) &&
           (allow_tried || !tried.count(id));
  }

  // Picks an instance not tried yet; a wait-based retry (`allow_tried`) may come back to a tried
  // one only when no other is left.
  std::optional<lb::Endpoint> PickEndpoint(MonoMs now, const std::unordered_set<std::string>& tried,
                                           bool allow_tried, std::optional<uint64_t> hash) {
    lb::PickContext ctx;
    ctx.now = now;
    ctx.hash = hash;
    ctx.eligible = [&](size_t i) { return Eligible(i, now, tried, false); };
    auto idx = balancer_->Pick(ctx);
    if (!idx && allow_tried) {
      ctx.eligible = [&](size_t i) { return Eligible(i, now, tried, true); };
      idx = balancer_->Pick(ctx);
    }
    if (!idx) return std::nullopt;
    balancer_->OnStart(*idx, now);
    breaker_.TryAcquire(balancer_->endpoints()[*idx].id);
    return balancer_->endpoints()[*idx];
  }

  // Reports an attempt to the balancer (by id: the list may have changed meanwhile) and the
  // outlier detector.
  void FinishAttempt(const lb::Endpoint& ep, MonoMs start, bool failed) {
    MonoMs now = NowMs();
    breaker_.Release(ep.id);
    if (auto it = index_of_.find(ep.id); it != index_of_.end()) {
      balancer_->OnFinish(it->second, now, (now - start) * 1000, failed);
    }
    if (outlier_.OnResult(ep.id, failed, now)) {
      m_.ejections->Inc();
      HLOG_WARN("proxy_ejected", "worker={} upstream={} addr={}:{}", index_, ep.id, ep.host,
                ep.port);
    }
  }

  // The ring_hash key of a request: --hash-header's value when present, else the client address.
  // Other policies take no key.
  std::optional<uint64_t> HashKey(const Request& req, const std::string& client_ip) const {
    if (opts_.policy != lb::Policy::kRingHash) return std::nullopt;
    if (!opts_.hash_header.empty()) {
      auto it = req.find(opts_.hash_header);
      if (it != req.end()) return std::hash<std::string_view>{}(it->value());
    }
    return std::hash<std::string>{}(client_ip);
  }

  asio::awaitable<Response> Forward(const Request& client_req, const std::string& client_ip) {
    MonoMs now = NowMs();
    const MonoMs deadline = now + opts_.retry.overall_timeout_ms;
    retry_.OnRequest(now);
    lb::RequestTraits traits;
    traits.idempotent = lb::IsIdempotentMethod(client_req.method_string());
    traits.body_buffered = true;
    Request up = MakeUpstreamRequest(client_req, client_ip, "");
    const bool head = client_req.method() == http::verb::head;
    std::unordered_set<std::string> tried;
    std::optional<Attempt> last;
    bool allow_tried = false;
    const std::optional<uint64_t> hash = HashKey(client_req, client_ip);
    for (int attempt = 1;; ++attempt) {
      auto ep = PickEndpoint(now, tried, allow_tried, hash);
      if (!ep) break;
      tried.insert(ep->id);
      int64_t budget = std::min(opts_.retry.per_try_timeout_ms, deadline - now);
      // (GCC 12 miscompiles co_await inside ?:, so this stays an if.)
      Attempt a{lb::AttemptFailure::kTimeout, false, std::nullopt};
      if (budget > 0) a = co_await TryOnce(*ep, up, head, budget);
      bool failed = a.failure.has_value() || (a.response && a.response->result_int() >= 500);
      FinishAttempt(*ep, now, failed);
      now = NowMs();
      if (!a.failure) co_return std::move(*a.response);
      if (*a.failure == lb::AttemptFailure::kConnectFailed) m_.connect_errors->Inc();
      lb::AttemptResult r{*a.failure, a.request_sent,
                          a.response ? static_cast<int>(a.response->result_int()) : 0};
      lb::RetryDecision d = retry_.Decide(traits, r, attempt, now, deadline);
      HLOG_INFO("proxy_attempt_failed",
                "worker={} upstream={} attempt={} failure={} status={} retry={} delay_ms={} "
                "reason=\"{}\"",
                index_, ep->id, attempt, static_cast<int>(*a.failure), r.status, d.retry,
                d.delay_ms, d.reason);
      last = std::move(a);
      if (!d.retry) break;
      m_.retries->Inc();
      // Wait-based retries may come back to a tried instance when no other exists.
      allow_tried = *last->failure == lb::AttemptFailure::kStatus ||
                    *last->failure == lb::AttemptFailure::kTimeout;
      if (d.delay_ms == 0) {
        m_.failovers->Inc();
      } else {
        asio::steady_timer t(*ioc_, std::chrono::milliseconds(d.delay_ms));
        co_await t.async_wait(kTuple);
        now = NowMs();
      }
    }
    co_return FinalResponse(last, client_req);
  }

  Response FinalResponse(std::optional<Attempt>& last, const Request& req) {
    unsigned v = req.version();
    std::string no_instance = "no healthy instance for service " + service_label_;
    if (!last && AnyFull()) {
      return ErrorResponse(http::status::service_unavailable,
                           "every instance of service " + service_label_ + " is at its limit", v,
                           true);
    }
    if (!last) return ErrorResponse(http::status::service_unavailable, no_instance, v, true);
    switch (*last->failure) {
      case lb::AttemptFailure::kStatus:
        return std::move(*last->response);
      case lb::AttemptFailure::kTimeout:
        return ErrorResponse(http::status::gateway_timeout, "upstream timed out", v, true);
      case lb::AttemptFailure::kBadGateway:
        return ErrorResponse(http::status::bad_gateway, "bad response from upstream", v, true);
      case lb::AttemptFailure::kClosedBeforeResponse:
        if (last->request_sent) {
          return ErrorResponse(http::status::bad_gateway, "upstream closed before responding", v,
                               true);
        }
        [[fallthrough]];
      case lb::AttemptFailure::kConnectFailed:
        break;
    }
    return ErrorResponse(http::status::service_unavailable, no_instance, v, true);
  }

  bool AnyFull() const {
    for (const auto& e : balancer_->endpoints()) {
      if (breaker_.IsFull(e.id)) return true;
    }
    return false;
  }

  std::unique_ptr<beast::tcp_stream> TakeIdle(const std::string& id) {
    auto it = pool_.find(id);
    if (it == pool_.end()) return nullptr;
    auto& conns = it->second;
    auto now = std::chrono::steady_clock::now();
    while (!conns.empty()) {
      IdleConn c = std::move(conns.back());
      conns.pop_back();
      // A connection idle for less than kTrustIdleFor cannot have hit an upstream keep-alive
      // timeout yet: skip the liveness poll, one syscall per request on the hot path. A rare
      // close in that window is still caught (retried on a fresh connection before any byte).
      if (now - c.since < kTrustIdleFor || !IdleConnectionDead(*c.stream)) {
        return std::move(c.stream);
      }
    }
    return nullptr;
  }

  void ReturnIdle(const std::string& id, std::unique_ptr<beast::tcp_stream> c) {
    if (draining_ || !index_of_.count(id)) return;
    auto& conns = pool_[id];
    if (conns.size() < opts_.max_idle_per_endpoint) {
      conns.push_back({std::move(c), std::chrono::steady_clock::now()});
    }
  }

  asio::awaitable<error_code> Connect(beast::tcp_stream& s, const lb::Endpoint& ep,
                                      int64_t timeout_ms) {
    s.expires_after(std::chrono::milliseconds(timeout_ms));
    error_code ec;
    auto addr = asio::ip::make_address(ep.host, ec);
    if (!ec) {
      auto [cec] = co_await s.async_connect(tcp::endpoint(addr, ep.port), kTuple);
      co_return cec;
    }
    tcp::resolver resolver(*ioc_);
    auto [rec, results] = co_await resolver.async_resolve(ep.host, std::to_string(ep.port), kTuple);
    if (rec) co_return rec;
    auto [cec, at] = co_await s.async_connect(results, kTuple);
    co_return cec;
  }

  // One try against one endpoint within timeout_ms. A pooled connection that turns out dead
  // before any response byte is replaced by a fresh one once, inside the same attempt: the
  // upstream closed it while idle, so it never saw the request.
  asio::awaitable<Attempt> TryOnce(const lb::Endpoint& ep, Request& up, bool head,
                                   int64_t timeout_ms) {
    auto expiry = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    std::unique_ptr<beast::tcp_stream> conn = TakeIdle(ep.id);
    for (int round = 0; round < 2; ++round) {
      bool reused = conn != nullptr;
      if (!conn) {
        conn = std::make_unique<beast::tcp_stream>(*ioc_);
        int64_t left = std::chrono::duration_cast<std::chrono::milliseconds>(
                           expiry - std::chrono::steady_clock::now())
                           .count();
        error_code ec = co_await Connect(*conn, ep, std::min(opts_.connect_timeout_ms, left));
        if (ec) {
          HLOG_DEBUG("proxy_connect_failed", "upstream={} error=\"{}\"", ep.id, ec.message());
          co_return Attempt{lb::AttemptFailure::kConnectFailed, false, std::nullopt};
        }
      }
      conn->expires_at(expiry);
      auto [wec, wn] = co_await http::async_write(*conn, up, kTuple);
      if (wec) {
        conn.reset();
        if (reused && wec != beast::error::timeout) continue;
        auto f = wec == beast::error::timeout ? lb::AttemptFailure::kTimeout
                                              : lb::AttemptFailure::kClosedBeforeResponse;
        co_return Attempt{f, false, std::nullopt};
      }
      beast::flat_buffer buf;
      http::response_parser<http::string_body> parser;
      parser.body_limit(opts_.max_response_bytes);
      if (head) parser.skip(true);
      auto [rec, rn] = co_await http::async_read(*conn, buf, parser, kTuple);
      if (rec) {
        bool nothing = !parser.got_some();
        conn.reset();
        if (rec == beast::error::timeout) {
          co_return Attempt{lb::AttemptFailure::kTimeout, true, std::nullopt};
        }
        if (nothing && IsPeerClosed(rec)) {
          if (reused) continue;
          co_return Attempt{lb::AttemptFailure::kClosedBeforeResponse, true, std::nullopt};
        }
        HLOG_INFO("proxy_bad_upstream_response", "upstream={} error=\"{}\"", ep.id, rec.message());
        co_return Attempt{lb::AttemptFailure::kBadGateway, true, std::nullopt};
      }
      Response res = parser.release();
      if (res.keep_alive() && buf.size() == 0) {
        ReturnIdle(ep.id, std::move(conn));
      }
      unsigned code = res.result_int();
      if (code == 502 || code == 503 || code == 504) {
        co_return Attempt{lb::AttemptFailure::kStatus, true, std::move(res)};
      }
      co_return Attempt{std::nullopt, true, std::move(res)};
    }
    co_return Attempt{lb::AttemptFailure::kClosedBeforeResponse, true, std::nullopt};
  }

  const int index_;
  const ProxyOptions& opts_;
  const std::string service_label_;
  ProxyMetrics& m_;
  std::unique_ptr<asio::io_context> ioc_ = std::make_unique<asio::io_context>(1);
  std::optional<tcp::acceptor> acceptor_;
  std::unique_ptr<lb::Balancer> balancer_;
  lb::OutlierDetector outlier_;
  lb::RetryPolicy retry_;
  lb::CircuitBreaker breaker_;
  EndpointSnapshot snapshot_;
  std::unordered_map<std::string, size_t> index_of_;
  std::unordered_set<std::string> unhealthy_;  // by active health checks
  struct IdleConn {
    std::unique_ptr<beast::tcp_stream> stream;
    std::chrono::steady_clock::time_point since;  // when it went back to the pool
  };
  static constexpr auto kTrustIdleFor = std::chrono::milliseconds(500);
  std::unordered_map<std::string, std::vector<IdleConn>> pool_;
  std::unordered_set<tcp::socket*> idle_clients_;
  size_t client_connections_ = 0;
  bool draining_ = false;
  std::atomic<int> inflight_{0};
  std::thread thread_;
};

Status ValidateProxyOptions(const ProxyOptions& o) {
  bool static_mode = !o.upstreams.empty();
  bool registry_mode = !o.service.empty() || !o.registry.empty();
  if (static_mode == registry_mode) {
    return Status::InvalidArgument(
        "give either --upstream (one or more) or --service with --registry");
  }
  if (registry_mode && (o.service.empty() || o.registry.empty())) {
    return Status::InvalidArgument("--service and --registry go together");
  }
  if (registry_mode && o.registry.rfind("http://", 0) != 0) {
    return Status::InvalidArgument("--registry must be http://HOST:PORT");
  }
  if (o.hash_header.size() > 256) return Status::InvalidArgument("--hash-header is too long");
  if (!o.hash_header.empty() && o.policy != lb::Policy::kRingHash) {
    return Status::InvalidArgument("--hash-header needs --lb ring_hash");
  }
  if (static_mode) {
    if (auto eps = ParseUpstreams(o.upstreams); !eps.ok()) return eps.status();
  }
  if (auto l = ParseListen(o.listen); !l.ok())
    return Status::InvalidArgument("--listen: " + l.status().message());
  if (!o.admin.empty()) {
    if (auto a = ParseListen(o.admin); !a.ok())
      return Status::InvalidArgument("--admin: " + a.status().message());
  }
  if (o.threads < 0 || o.threads > kMaxThreads) {
    return Status::InvalidArgument("--threads must be within 0.." + std::to_string(kMaxThreads));
  }
  if (Status s = lb::ValidateRetryOptions(o.retry); !s.ok()) return s;
  if (Status s = lb::ValidateOutlierOptions(o.outlier); !s.ok()) return s;
  if (o.max_body_bytes == 0 || o.max_body_bytes > (size_t{1} << 30) || o.max_header_bytes < 1024 ||
      o.max_header_bytes > (size_t{1} << 20) || o.max_response_bytes == 0 ||
      o.max_response_bytes > (size_t{1} << 31)) {
    return Status::InvalidArgument("body/header/response size limits out of range");
  }
  if (o.header_timeout_ms <= 0 || o.idle_timeout_ms <= 0 || o.connect_timeout_ms <= 0 ||
      o.drain_timeout_ms < 0 || o.watch_wait_ms <= 0 || o.watch_wait_ms > 10 * 60 * 1000) {
    return Status::InvalidArgument("timeouts out of range");
  }
  if (o.max_client_connections == 0 || o.max_idle_per_endpoint > 100'000) {
    return Status::InvalidArgument("connection limits out of range");
  }
  if (!o.health_path.empty()) {
    if (registry_mode) {
      return Status::InvalidArgument(
          "--health-path is for static --upstream mode; the registry health-checks --service");
    }
    if (o.health_path[0] != '/' || o.health_path.size() > 1024 ||
        o.health_path.find_first_of(" \r\n") != std::string::npos) {
      return Status::InvalidArgument("--health-path must be a path starting with /");
    }
  }
  if (o.health_interval_ms < kMinHealthIntervalMs || o.health_interval_ms > kMaxHealthMs) {
    return Status::InvalidArgument("--health-interval must be within 100ms..1h");
  }
  if (o.health_timeout_ms < 1 || o.health_timeout_ms > kMaxHealthMs) {
    return Status::InvalidArgument("--health-timeout must be within 1ms..1h");
  }
  if (o.unhealthy_threshold < 1 || o.unhealthy_threshold > kMaxHealthThreshold ||
      o.healthy_threshold < 1 || o.healthy_threshold > kMaxHealthThreshold) {
    return Status::InvalidArgument("--unhealthy-threshold and --healthy-threshold must be 1..100");
  }
  return Status::Ok();
}

// Active health checks (static mode): GETs health_path on every upstream every interval on its own
// loop thread, and reports an upstream that crossed a threshold. Its state is touched only on that
// thread.
class HealthChecker {
 public:
  using OnChange = std::function<void(const std::string& id, bool healthy)>;

  HealthChecker(const ProxyOptions& opts, const std::vector<lb::Endpoint>& eps, ProxyMetrics& m,
                OnChange on_change)
      : opts_(opts), m_(m), on_change_(std::move(on_change)) {
    for (const auto& e : eps) {
      targets_.push_back({e, "http://" + e.host + ":" + std::to_string(e.port) + opts.health_path});
    }
  }
  ~HealthChecker() { Stop(); }

  void Start() {
    io_.Start();
    io_.Post([this] { Tick(); });
  }
  // After Stop returns no result is reported any more.
  void Stop() {
    stopped_ = true;
    io_.Stop();
  }

 private:
  struct Target {
    lb::Endpoint ep;
    std::string url;
    bool healthy = true;   // until checks say otherwise: traffic flows from the start
    int passes = 0;        // in a row
    int fails = 0;         // in a row
    bool probing = false;  // a slow upstream gets no second probe on top of the first
  };

  void Tick() {
    if (stopped_) return;
    for (size_t i = 0; i < targets_.size(); ++i) {
      Target& t = targets_[i];
      if (t.probing) continue;
      t.probing = true;
      net::ProbeHttp(io_, "GET", t.url, {}, false, opts_.health_timeout_ms,
                     [this, i](net::ProbeResult r) { OnResult(i, r); });
    }
    timer_ = io_.RunAfter(opts_.health_interval_ms, [this] { Tick(); });
  }

  void OnResult(size_t i, const net::ProbeResult& r) {
    Target& t = targets_[i];
    t.probing = false;
    if (stopped_) return;
    bool pass = r.status == "passing";
    (pass ? m_.health_pass : m_.health_fail)->Inc();
    if (pass) {
      t.fails = 0;
      t.passes = std::min(t.passes + 1, kMaxHealthThreshold);
      if (t.healthy || t.passes < opts_.healthy_threshold) return;
      t.healthy = true;
      HLOG_INFO("proxy_upstream_healthy", "upstream={} passes={}", t.ep.id, t.passes);
    } else {
      t.passes = 0;
      t.fails = std::min(t.fails + 1, kMaxHealthThreshold);
      if (!t.healthy || t.fails < opts_.unhealthy_threshold) return;
      t.healthy = false;
      HLOG_WARN("proxy_upstream_unhealthy", "upstream={} fails={} output=\"{}\"", t.ep.id, t.fails,
                r.output);
    }
    on_change_(t.ep.id, t.healthy);
  }

  const ProxyOptions& opts_;
  ProxyMetrics& m_;
  OnChange on_change_;
  std::vector<Target> targets_;
  std::shared_ptr<net::Timer> timer_;
  std::atomic<bool> stopped_{false};
  net::IoRuntime io_{1};  // last: stopped and destroyed before the state its handlers touch
};

struct ProxyServer::Impl {
  ProxyOptions opts;
  ProxyMetrics metrics;
  std::vector<std::unique_ptr<Worker>> workers;
  std::unique_ptr<Discovery> discovery;
  std::unique_ptr<HealthChecker> health;  // with --health-path
  std::unique_ptr<net::IoRuntime> admin_io;
  std::unique_ptr<net::HttpServer> admin;
  std::string address;
  bool started = false;
  bool stopped = false;

  Status StartWorkers();  // binds; the threads start later
  void StartDiscovery();  // waits (bounded) for the first backend set
  static constexpr int64_t kFirstDiscoveryMs = 5'000;
  std::mutex first_mu;
  std::condition_variable first_cv;
  bool have_first = false;
  Status StartAdmin();
  void StartHealthChecks();
  void HandleAdmin(const net::HttpRequest& req, net::Responder respond);
  void HandleStatus(net::Responder respond);
};

ProxyServer::ProxyServer(ProxyOptions opts) : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(opts);
  if (impl_->opts.threads == 0) {
    impl_->opts.threads =
        std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, kMaxThreads);
  }
}

ProxyServer::~ProxyServer() { Shutdown(0); }

Status ProxyServer::Impl::StartWorkers() {
  auto listen = ParseListen(opts.listen);
  if (!listen.ok()) return listen.status();
  error_code ec;
  auto addr = asio::ip::make_address(listen->host, ec);
  if (ec) return Status::InvalidArgument("--listen needs an IP address, got " + listen->host);
  std::string label = opts.service.empty() ? "static" : opts.service;
  uint16_t port = listen->port;
  for (int i = 0; i < opts.threads; ++i) {
    auto w = std::make_unique<Worker>(i, opts, label, metrics);
    // The first listener may take an ephemeral port; the others share it through SO_REUSEPORT.
    if (Status s = w->Bind(tcp::endpoint(addr, port)); !s.ok()) return s;
    port = w->bound_port();
    workers.push_back(std::move(w));
  }
  address = listen->host + ":" + std::to_string(port);
  if (!opts.upstreams.empty()) {
    auto eps = ParseUpstreams(opts.upstreams);
    if (!eps.ok()) return eps.status();
    auto snap = std::make_shared<const std::vector<lb::Endpoint>>(std::move(eps.value()));
    for (auto& w : workers) w->SetEndpoints(snap);  // before the threads start: no race
  }
  return Status::Ok();
}

void ProxyServer::Impl::StartDiscovery() {
  DiscoveryOptions d{opts.registry, opts.service, opts.watch_wait_ms, 1000};
  discovery = std::make_unique<Discovery>(d, [this](EndpointSnapshot snap) {
    for (auto& w : workers) w->PostEndpoints(snap);
    std::lock_guard lock(first_mu);
    have_first = true;
    first_cv.notify_all();
  });
  discovery->Start();
  // Workers take no client before the first set arrives (posted ahead of any accept), so a proxy
  // that just started does not answer 503 for a service that has instances.
  std::unique_lock lock(first_mu);
  if (!first_cv.wait_for(lock, std::chrono::milliseconds(kFirstDiscoveryMs),
                         [&] { return have_first; })) {
    HLOG_WARN("proxy_discovery_slow", "service={} waited_ms={}", opts.service, kFirstDiscoveryMs);
  }
}

void ProxyServer::Impl::StartHealthChecks() {
  auto eps = ParseUpstreams(opts.upstreams);
  if (!eps.ok()) return;  // validated before: cannot happen
  health = std::make_unique<HealthChecker>(opts, *eps, metrics,
                                           [this](const std::string& id, bool healthy) {
                                             for (auto& w : workers) w->PostHealth(id, healthy);
                                           });
  health->Start();
  HLOG_INFO("proxy_health_checks", "path={} interval_ms={} timeout_ms={} upstreams={}",
            opts.health_path, opts.health_interval_ms, opts.health_timeout_ms, eps->size());
}

void ProxyServer::Impl::HandleStatus(net::Responder respond) {
  struct Gather {
    std::mutex mu;
    boost::json::array parts;
    size_t left;
    net::Responder respond;
    std::string service, policy;
  };
  auto g = std::make_shared<Gather>();
  g->left = workers.size();
  g->respond = std::move(respond);
  g->service = opts.service;
  g->policy = std::string(lb::PolicyName(opts.policy));
  for (auto& w : workers) {
    w->PostStatus([g](boost::json::object part) {
      std::lock_guard lock(g->mu);
      g->parts.push_back(std::move(part));
      if (--g->left > 0) return;
      boost::json::object o;
      o["service"] = g->service;
      o["policy"] = g->policy;
      o["workers"] = std::move(g->parts);
      g->respond(net::HttpResponse{200, "application/json", {}, boost::json::serialize(o)});
    });
  }
}

void ProxyServer::Impl::HandleAdmin(const net::HttpRequest& req, net::Responder respond) {
  if (req.method != "GET") {
    respond({405, "text/plain", {}, "only GET\n"});
  } else if (req.path == "/metrics") {
    respond(
        {200, "text/plain; version=0.0.4", {}, metrics::Registry::Default().RenderPrometheus()});
  } else if (req.path == "/status") {
    HandleStatus(std::move(respond));
  } else {
    respond({404, "text/plain", {}, "not found: try /metrics or /status\n"});
  }
}

Status ProxyServer::Impl::StartAdmin() {
  if (opts.admin.empty()) return Status::Ok();
  auto at = ParseListen(opts.admin);
  if (!at.ok()) return at.status();
  admin_io = std::make_unique<net::IoRuntime>(1);
  net::HttpServerOptions ho;
  ho.host = at->host;
  ho.port = at->port;
  ho.max_connections = 64;
  admin = std::make_unique<net::HttpServer>(
      *admin_io, ho,
      [this](net::HttpRequest req, net::Responder r) { HandleAdmin(req, std::move(r)); });
  if (Status s = admin->Start(); !s.ok()) return s;
  admin_io->Start();
  return Status::Ok();
}

Status ProxyServer::Start() {
  if (impl_->started) return Status::Ok();
  if (Status s = ValidateProxyOptions(impl_->opts); !s.ok()) return s;
  impl_->started = true;
  if (Status s = impl_->StartWorkers(); !s.ok()) return s;
  if (Status s = impl_->StartAdmin(); !s.ok()) return s;
  if (!impl_->opts.service.empty()) impl_->StartDiscovery();
  for (auto& w : impl_->workers) w->Start();
  if (!impl_->opts.health_path.empty()) impl_->StartHealthChecks();
  return Status::Ok();
}

std::string ProxyServer::address() const { return impl_->address; }

std::string ProxyServer::admin_address() const {
  return impl_->admin ? impl_->admin->address() : "";
}

void ProxyServer::Shutdown(int64_t deadline_ms) {
  if (impl_->stopped) return;
  impl_->stopped = true;
  if (impl_->health) impl_->health->Stop();  // before the workers it posts to go away
  if (impl_->discovery) impl_->discovery->Stop();
  for (auto& w : impl_->workers) w->PostDrain();
  MonoMs until = NowMs() + deadline_ms;
  auto busy = [&] {
    for (auto& w : impl_->workers) {
      if (w->inflight() > 0) return true;
    }
    return false;
  };
  while (busy() && NowMs() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (impl_->admin) impl_->admin->Stop();
  if (impl_->admin_io) impl_->admin_io->Stop();
  for (auto& w : impl_->workers) w->Stop();
  impl_->workers.clear();
  impl_->discovery.reset();
  impl_->health.reset();
}

int RunProxy(const ProxyOptions& opts) {
  if (Status s = ValidateProxyOptions(opts); !s.ok()) {
    HLOG_ERROR("proxy_bad_flags", "error=\"{}\"", s.message());
    return 2;
  }
  // Blocked before any thread starts, so only sigwait below sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ProxyServer server(opts);
  if (Status s = server.Start(); !s.ok()) {
    HLOG_ERROR("proxy_start_failed", "listen={} error=\"{}\"", opts.listen, s.ToString());
    return 1;
  }
  HLOG_INFO("listening", "proxy={} admin={} threads={} lb={} upstreams={} service={}",
            server.address(), server.admin_address().empty() ? "-" : server.admin_address(),
            opts.threads, lb::PolicyName(opts.policy), opts.upstreams.size(),
            opts.service.empty() ? "-" : opts.service);
  int sig = 0;
  sigwait(&signals, &sig);
  HLOG_INFO("shutting_down", "signal={} drain_ms={}", sig, opts.drain_timeout_ms);
  server.Shutdown(opts.drain_timeout_ms);
  HLOG_INFO("stopped", "proxy={}", server.address());
  return 0;
}

}  // namespace haven::proxy
