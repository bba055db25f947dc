#include "proxy/http_session.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>

#include "base/log.h"
#include "lb/retry_policy.h"
#include "proxy/http1.h"
#include "proxy/upstream_conn.h"

namespace haven::proxy {

namespace {

using http1::BodyKind;

std::string_view View(const boost::beast::flat_buffer& b) {
  auto d = b.data();
  return {static_cast<const char*>(d.data()), d.size()};
}

// Room for reading more into `b`: at least `min_room`, the buffer never grown past `max_size`.
// An empty buffer means the limit is reached.
asio::mutable_buffer Room(boost::beast::flat_buffer& b, size_t min_room, size_t max_size) {
  if (b.size() >= max_size) return {};
  return b.prepare(std::min(std::max(min_room, b.capacity() - b.size()), max_size - b.size()));
}

constexpr size_t kReadChunk = 16 << 10;

// One attempt's outcome: a response (its head parsed into the session's res_, the rest in
// conn->buf and the socket), or why there is none.
struct Attempt {
  std::optional<lb::AttemptFailure> failure;
  bool request_sent = false;
  int status = 0;
  std::unique_ptr<UpstreamConn> conn;  // holds the response when there is one
  // Refused, or reset/closed before any answer on a fresh connection: the instance is dead (as
  // opposed to our own connection limit or a connect timeout).
  bool definite = false;
};

// What an attempt says about its instance, for outlier detection.
lb::Outcome OutcomeOf(const Attempt& a) {
  if (!a.failure) return a.status >= 500 ? lb::Outcome::kFailure : lb::Outcome::kSuccess;
  if (a.definite) return lb::Outcome::kConnectFailure;
  if (*a.failure == lb::AttemptFailure::kTimeout) return lb::Outcome::kTimeout;
  return lb::Outcome::kFailure;
}

bool RefusedOrReset(const error_code& ec) {
  return ec == asio::error::connection_refused || ec == asio::error::connection_reset ||
         ec == asio::error::eof || ec == asio::error::broken_pipe;
}

class HttpSession {
 public:
  HttpSession(WorkerContext& w, const ListenerRuntime& l, Socket socket)
      : w_(w), l_(l), client_(std::move(socket)), deadline_(client_) {
    limits_.max_head_bytes = w.opts.max_header_bytes;
    idle_.socket = &client_;
    error_code ec;
    auto remote = client_.remote_endpoint(ec);
    client_ip_ = ec ? "unknown" : remote.address().to_string();
    client_.set_option(tcp::no_delay(true), ec);
  }

  Task<void> Run() {
    for (;;) {
      if (!co_await ReadRequest()) break;
      ++w_.inflight;
      bool keep = co_await HandleRequest();
      --w_.inflight;
      if (!keep) break;
    }
    error_code ec;
    client_.shutdown(tcp::socket::shutdown_send, ec);
    client_.close(ec);
  }

 private:
  // --- reading the client's request -------------------------------------------------------------

  // Waits for more bytes from the client into in_. The first byte of a request waits up to the
  // idle timeout as a drainable idle connection; the rest of a request must arrive within the
  // header timeout of its first byte.
  Task<bool> ReadMore(size_t max_size) {
    bool idle = in_.size() == 0;
    if (idle) {
      if (w_.draining) co_return false;
      deadline_.ExpireAfterMs(w_.opts.idle_timeout_ms);
      w_.idle_clients.push_back(idle_);
    } else if (!request_started_) {
      request_started_ = true;
      deadline_.ExpireAfterMs(w_.opts.header_timeout_ms);
    }
    auto room = Room(in_, kReadChunk, max_size);
    if (room.size() == 0) co_return false;
    auto [ec, n] = co_await client_.async_read_some(room, kAwait);
    if (idle) idle_.unlink();
    if (ec) co_return false;
    in_.commit(n);
    co_return true;
  }

  // Reads one whole request (head and body) into in_ and parses its head into req_. False: the
  // connection is done (closed, timed out, or answered with an error).
  Task<bool> ReadRequest() {
    request_started_ = false;
    const size_t head_max = w_.opts.max_header_bytes;
    http1::ParseError err;
    for (;;) {
      if (in_.size() > 0) {
        auto st = http1::ParseRequestHead(View(in_), limits_, &req_, &err);
        if (st == http1::ParseStatus::kError)
          co_return co_await ReplyAndClose(err.status, err.message);
        if (st == http1::ParseStatus::kComplete) break;
      }
      if (!co_await ReadMore(head_max + kReadChunk)) co_return false;
    }
    if (req_.body == BodyKind::kLength && req_.content_length > w_.opts.max_body_bytes) {
      co_return co_await ReplyAndClose(413, BodyTooLarge());
    }
    if (!co_await ReadBody()) co_return false;
    // Reading may have moved the buffer: parse the head again so req_'s views point into it.
    if (View(in_).data() != req_.method.data()) {
      http1::ParseRequestHead(View(in_), limits_, &req_, &err);
    }
    co_return true;
  }

  std::string BodyTooLarge() const {
    return "request body over " + std::to_string(w_.opts.max_body_bytes) + " bytes";
  }

  // Reads the body that follows the head, sets request_bytes_ (head + body as sent).
  Task<bool> ReadBody() {
    const size_t max_size = req_.head_bytes + w_.opts.max_body_bytes + kReadChunk;
    if (req_.expect_continue && req_.body != BodyKind::kNone &&
        in_.size() < req_.head_bytes + (req_.body == BodyKind::kLength ? req_.content_length : 1)) {
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      auto [ec, n] = co_await asio::async_write(client_, asio::buffer(kContinue), kAwait);
      if (ec) co_return false;
    }
    if (req_.body == BodyKind::kLength) {
      const size_t need = req_.head_bytes + req_.content_length;
      while (in_.size() < need) {
        if (!co_await ReadMore(max_size)) co_return false;
      }
      request_bytes_ = need;
      co_return true;
    }
    if (req_.body == BodyKind::kNone) {
      request_bytes_ = req_.head_bytes;
      co_return true;
    }
    http1::ChunkedScanner scanner(w_.opts.max_body_bytes);
    size_t scanned = req_.head_bytes;
    for (;;) {
      auto n = scanner.Feed(View(in_).substr(scanned));
      if (!n.ok()) co_return co_await ReplyAndClose(scanner.error_status(), n.status().message());
      scanned += *n;
      if (scanner.done()) break;
      if (!co_await ReadMore(max_size)) co_return false;
    }
    request_bytes_ = scanned;
    co_return true;
  }

  // --- answering
  // ----------------------------------------------------------------------------------

  Task<bool> WriteOut() {
    deadline_.ExpireAfterMs(w_.opts.idle_timeout_ms);
    auto [ec, n] = co_await asio::async_write(client_, asio::buffer(out_), kAwait);
    co_return !ec;
  }

  // Answers with a canned error and closes the connection (bad requests).
  Task<bool> ReplyAndClose(int status, std::string_view message) {
    HLOG_INFO("proxy_bad_request", "status={} error=\"{}\"", status, message);
    out_.clear();
    http1::AppendErrorResponse(status, message, 1, false, &out_);
    co_await WriteOut();
    co_return false;
  }

  // Answers with a canned error on a connection that stays open (when the client wants it).
  Task<bool> ReplyError(ClusterMetrics* m, int status, std::string_view message) {
    bool keep = req_.keep_alive && !w_.draining;
    out_.clear();
    http1::AppendErrorResponse(status, message, req_.version_minor, keep, &out_);
    if (m) m->CountResponse(status);
    in_.consume(request_bytes_);
    co_return co_await WriteOut() && keep;
  }

  // Routes, forwards and answers the request in in_; false closes the connection.
  Task<bool> HandleRequest() {
    if (req_.upgrade)
      co_return co_await ReplyError(nullptr, 501, "protocol upgrades are not supported");
    auto route = l_.router.Match(req_.Find("host"), req_.target);
    if (!route) {
      co_return co_await ReplyError(nullptr, 404,
                                    "no route for host \"" + std::string(req_.Find("host")) +
                                        "\" path \"" + std::string(req_.target.substr(0, 256)) +
                                        "\"");
    }
    Cluster& c = *l_.route_clusters[*route];
    const RouteOptions& ro = l_.options->routes[*route];
    MonoMs start = NowMs();
    // The request as sent upstream: rewritten head, body as received.
    up_.clear();
    http1::AppendUpstreamRequestHead(req_, client_ip_, "", &up_);
    up_.append(View(in_).substr(req_.head_bytes, request_bytes_ - req_.head_bytes));
    bool keep = co_await Forward(c, ro);
    c.metrics().latency->Observe(static_cast<double>(NowMs() - start) / 1000.0);
    co_return keep;
  }

  // The ring_hash key of a request: the cluster's hash header when present, else the client
  // address. Other policies take no key.
  std::optional<uint64_t> HashKey(const Cluster& c) const {
    if (c.options().policy != lb::Policy::kRingHash) return std::nullopt;
    if (!c.options().hash_header.empty() && req_.Has(c.options().hash_header)) {
      return std::hash<std::string_view>{}(req_.Find(c.options().hash_header));
    }
    return std::hash<std::string_view>{}(client_ip_);
  }

  bool Retryable(const RouteOptions& ro) const {
    return lb::IsIdempotentMethod(req_.method) || ro.retry_non_idempotent ||
           http1::IEquals(req_.Find("x-haven-retryable"), "true");
  }

  // Tries instances until one answers or the retry policy gives up; then answers the client.
  Task<bool> Forward(Cluster& c, const RouteOptions& ro) {
    ClusterMetrics& m = c.metrics();
    MonoMs now = NowMs();
    const MonoMs deadline = now + c.options().retry.overall_timeout_ms;
    c.retry().OnRequest(now);
    lb::RequestTraits traits;
    traits.idempotent = Retryable(ro);
    traits.body_buffered = true;
    const bool head = req_.method == "HEAD";
    const auto hash = HashKey(c);
    Cluster::Tried tried;
    std::optional<Attempt> last;
    bool allow_tried = false;
    int dead_tries = 0;  // tries that found their instance dead: not counted as attempts
    for (int tries = 1;; ++tries) {
      const int attempt = tries - dead_tries;
      auto picked = c.Pick(now, tried, allow_tried, hash);
      if (!picked) break;
      int64_t budget = std::min(c.TryTimeoutMs(traits.idempotent, attempt, now), deadline - now);
      Attempt a;
      a.failure = lb::AttemptFailure::kTimeout;
      if (budget > 0) a = co_await TryOnce(c, *picked, head, SteadyAfterMs(budget));
      c.Finish(*picked, now, OutcomeOf(a));
      now = NowMs();
      if (!a.failure) co_return co_await StreamResponse(c, *picked, std::move(a));
      if (*a.failure == lb::AttemptFailure::kConnectFailed) m.connect_errors->Inc();
      if (a.definite) ++dead_tries;
      lb::AttemptResult r{*a.failure, a.request_sent, a.status, a.definite, dead_tries};
      lb::RetryDecision d = c.retry().Decide(traits, r, attempt, now, deadline);
      HLOG_INFO("proxy_attempt_failed",
                "cluster={} worker={} upstream={} try={} attempt={} dead={} failure={} status={} "
                "retry={} delay_ms={} reason=\"{}\"",
                m.name, w_.index, picked->endpoint().id, tries, attempt, a.definite,
                static_cast<int>(*a.failure), r.status, d.retry, d.delay_ms, d.reason);
      if (!d.retry) {
        // A 502/503/504 the policy will not retry is the answer.
        if (*a.failure == lb::AttemptFailure::kStatus) {
          co_return co_await StreamResponse(c, *picked, std::move(a));
        }
        last = std::move(a);
        break;
      }
      last = std::move(a);
      last->conn.reset();  // an unread response: the connection cannot be reused
      tried.push_back(picked->endpoint().id);
      m.retries->Inc();
      // Wait-based retries may come back to a tried instance when no other exists; so may a retry
      // past a dead instance (the tried ones may have been slow, e.g. in a registry leader change,
      // not dead; the dead one is ejected).
      allow_tried = *last->failure == lb::AttemptFailure::kStatus ||
                    *last->failure == lb::AttemptFailure::kTimeout || last->definite;
      if (d.delay_ms == 0) {
        m.failovers->Inc();
      } else {
        Timer t(w_.ex, std::chrono::milliseconds(d.delay_ms));
        co_await t.async_wait(kAwait);
        now = NowMs();
      }
    }
    auto [status, message] = FinalError(c, last);
    co_return co_await ReplyError(&m, status, message);
  }

  // The answer when no attempt produced a response to pass on.
  std::pair<int, std::string> FinalError(const Cluster& c, const std::optional<Attempt>& last) {
    std::string no_instance = "no healthy instance for service " + c.metrics().name;
    if (!last && c.AnyFull()) {
      return {503, "every instance of service " + c.metrics().name + " is at its limit"};
    }
    if (!last) return {503, no_instance};
    switch (*last->failure) {
      case lb::AttemptFailure::kTimeout:
        return {504, "upstream timed out"};
      case lb::AttemptFailure::kBadGateway:
      case lb::AttemptFailure::kStatus:
        return {502, "bad response from upstream"};
      case lb::AttemptFailure::kClosedBeforeResponse:
        if (last->request_sent) return {502, "upstream closed before responding"};
        [[fallthrough]];
      case lb::AttemptFailure::kConnectFailed:
        break;
    }
    return {503, no_instance};
  }

  // One try against one instance until its response head arrived (or `expiry`). A pooled
  // connection that turns out dead before any response byte is replaced by a fresh one once,
  // inside the same attempt: the upstream closed it while idle, so it never saw the request.
  Task<Attempt> TryOnce(Cluster& c, const Cluster::Picked& p, bool head, SteadyTime expiry) {
    std::unique_ptr<UpstreamConn> conn = c.TakeIdle(p);
    for (int round = 0; round < 2; ++round) {
      bool reused = conn != nullptr;
      if (!conn) {
        conn = c.NewConnection(p);
        if (!conn) co_return Attempt{lb::AttemptFailure::kConnectFailed, false, 0, nullptr};
        SteadyTime connect_by = std::min(expiry, SteadyAfterMs(c.options().connect_timeout_ms));
        error_code ec = co_await ConnectUpstream(*conn, p.endpoint(), connect_by);
        if (ec) {
          HLOG_DEBUG("proxy_connect_failed", "upstream={} error=\"{}\"", p.endpoint().id,
                     ec.message());
          co_return Attempt{lb::AttemptFailure::kConnectFailed, false, 0, nullptr,
                            RefusedOrReset(ec)};
        }
      }
      conn->deadline.ExpireAt(expiry);
      auto [wec, wn] = co_await asio::async_write(conn->socket, asio::buffer(up_), kAwait);
      if (wec) {
        bool timeout = conn->deadline.expired();
        conn.reset();
        if (reused && !timeout) continue;
        auto f = timeout ? lb::AttemptFailure::kTimeout : lb::AttemptFailure::kClosedBeforeResponse;
        co_return Attempt{f, false, 0, nullptr, !timeout};
      }
      Attempt a = co_await ReadResponseHead(*conn, head);
      if (a.failure == lb::AttemptFailure::kClosedBeforeResponse) {
        if (reused) {
          conn.reset();
          continue;
        }
        a.definite = true;  // a fresh connection closed without a byte of answer
      }
      if (!a.failure || *a.failure == lb::AttemptFailure::kStatus) a.conn = std::move(conn);
      co_return a;
    }
    co_return Attempt{lb::AttemptFailure::kClosedBeforeResponse, true, 0, nullptr};
  }

  // Reads until a final (non-1xx) response head is in conn.buf; interim 1xx answers are dropped.
  Task<Attempt> ReadResponseHead(UpstreamConn& conn, bool head) {
    http1::Limits limits;
    limits.max_head_bytes = w_.opts.max_header_bytes;
    http1::ParseError err;
    Attempt a;
    a.request_sent = true;
    bool got_some = conn.buf.size() > 0;
    for (;;) {
      if (conn.buf.size() > 0) {
        auto st = http1::ParseResponseHead(View(conn.buf), limits, head, &res_, &err);
        if (st == http1::ParseStatus::kError) {
          HLOG_INFO("proxy_bad_upstream_response", "error=\"{}\"", err.message);
          a.failure = lb::AttemptFailure::kBadGateway;
          co_return a;
        }
        if (st == http1::ParseStatus::kComplete) {
          if (res_.status >= 100 && res_.status < 200) {
            conn.buf.consume(res_.head_bytes);
            continue;
          }
          a.status = res_.status;
          if (a.status == 502 || a.status == 503 || a.status == 504) {
            a.failure = lb::AttemptFailure::kStatus;
          }
          co_return a;
        }
      }
      auto room = Room(conn.buf, kReadChunk, limits.max_head_bytes + kReadChunk);
      auto [ec, n] = co_await conn.socket.async_read_some(room, kAwait);
      if (ec) {
        if (conn.deadline.expired()) {
          a.failure = lb::AttemptFailure::kTimeout;
        } else if (!got_some) {
          a.failure = lb::AttemptFailure::kClosedBeforeResponse;
        } else {
          a.failure = lb::AttemptFailure::kBadGateway;
        }
        co_return a;
      }
      got_some = true;
      conn.buf.commit(n);
    }
  }

  // --- streaming the response -------------------------------------------------------------------

  // Sends the response whose head is in res_ (and a.conn->buf) to the client, body streamed as it
  // arrives. The upstream connection goes back to the pool after a complete keep-alive exchange.
  Task<bool> StreamResponse(Cluster& c, const Cluster::Picked& p, Attempt a) {
    UpstreamConn& conn = *a.conn;
    const http1::ResponseHead& res = res_;
    bool keep = req_.keep_alive && !w_.draining && res.body != BodyKind::kUntilClose &&
                !(res.body == BodyKind::kChunked && req_.version_minor == 0);
    out_.clear();
    http1::AppendClientResponseHead(res, req_.version_minor, keep, &out_);
    const BodyKind body = res.body;
    uint64_t left = res.content_length;  // kLength
    conn.buf.consume(res.head_bytes);    // res's views are dead from here on
    c.metrics().CountResponse(static_cast<unsigned>(a.status));
    in_.consume(request_bytes_);
    http1::ChunkedScanner scanner(UINT64_MAX / 4);
    bool done = body == BodyKind::kNone;
    // Moves what conn.buf holds of the body into out_; sets done at the body's end.
    auto take = [&]() -> bool {
      std::string_view avail = View(conn.buf);
      size_t n = avail.size();
      if (body == BodyKind::kLength) {
        n = static_cast<size_t>(std::min<uint64_t>(left, n));
        left -= n;
        done = left == 0;
      } else if (body == BodyKind::kChunked) {
        auto r = scanner.Feed(avail);
        if (!r.ok()) return false;
        n = *r;
        done = scanner.done();
      }
      out_.append(avail.substr(0, n));
      conn.buf.consume(n);
      return true;
    };
    if (!done && !take()) co_return Truncated(c);
    bool upstream_eof = false;
    for (;;) {
      if (!out_.empty()) {
        if (!co_await WriteOut())
          co_return false;  // the client left: drop conn, it has unread bytes
        out_.clear();
      }
      if (done || upstream_eof) break;
      conn.deadline.ExpireAfterMs(c.options().retry.per_try_timeout_ms);
      auto [ec, n] =
          co_await conn.socket.async_read_some(Room(conn.buf, kReadChunk, 4 * kReadChunk), kAwait);
      if (ec) {
        if (body != BodyKind::kUntilClose || conn.deadline.expired()) co_return Truncated(c);
        upstream_eof = true;
        continue;
      }
      conn.buf.commit(n);
      if (!take()) co_return Truncated(c);
    }
    if (done && res.keep_alive && conn.buf.size() == 0) c.ReturnIdle(p, std::move(a.conn));
    co_return keep;
  }

  bool Truncated(Cluster& c) {
    c.metrics().truncated->Inc();
    HLOG_INFO("proxy_response_truncated", "cluster={} worker={}", c.metrics().name, w_.index);
    return false;
  }

  WorkerContext& w_;
  const ListenerRuntime& l_;
  Socket client_;
  SocketDeadline deadline_;
  IdleClient idle_;  // linked while waiting for the next request
  std::string client_ip_;
  http1::Limits limits_;
  boost::beast::flat_buffer in_;  // the client's bytes: the current request first
  http1::RequestHead req_;
  http1::ResponseHead res_;   // of the latest attempt (reused: its header vector keeps capacity)
  size_t request_bytes_ = 0;  // head + body of the current request in in_
  bool request_started_ = false;
  std::string up_;   // the current request as sent upstream
  std::string out_;  // bytes for the client
};

}  // namespace

Task<void> ServeHttpClient(WorkerContext& w, const ListenerRuntime& listener, Socket socket) {
  HttpSession session(w, listener, std::move(socket));
  co_await session.Run();
}

}  // namespace haven::proxy
