#include "net/http_server.h"

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <limits>
#include <mutex>
#include <optional>
#include <unordered_map>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "base/log.h"
#include "base/metrics.h"

namespace haven::net {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

// Open connections across every server in the process, for the gauge.
std::atomic<int64_t> g_open_connections{0};

void AddOpenConnections(int64_t delta) {
  static metrics::Gauge& gauge = metrics::Registry::Default().GetGauge(
      "haven_http_connections", "Open HTTP server connections.");
  gauge.Set(static_cast<double>(g_open_connections.fetch_add(delta) + delta));
}

std::chrono::milliseconds Ms(int64_t ms) {
  return std::chrono::milliseconds(std::clamp<int64_t>(ms, 1, int64_t{24} * 3600 * 1000));
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool HasLineBreak(std::string_view s) { return s.find_first_of("\r\n") != std::string_view::npos; }

std::string FormatEndpoint(const tcp::endpoint& ep) {
  auto addr = ep.address();
  std::string host = addr.to_string();
  if (addr.is_v6()) host = "[" + host + "]";
  return host + ":" + std::to_string(ep.port());
}

HttpResponse PlainText(int status, std::string message) {
  HttpResponse r;
  r.status = status;
  r.content_type = "text/plain; charset=utf-8";
  r.body = std::move(message) + "\n";
  return r;
}

// Caps bytes read after an error response so the client sees it instead of a reset.
constexpr size_t kMaxDrainBytes = 16 << 20;
constexpr int64_t kDrainTimeoutMs = 2000;

}  // namespace

class Session;

struct ServerCore : std::enable_shared_from_this<ServerCore> {
  ServerCore(IoRuntime& rt, HttpServerOptions o, HttpHandler h)
      : runtime(rt), opts(std::move(o)), handler(std::move(h)) {}

  void DoAccept();
  void OnAccept(error_code ec, tcp::socket socket);
  void Remove(Session* s);

  IoRuntime& runtime;
  const HttpServerOptions opts;
  const HttpHandler handler;

  std::mutex mu;  // guards everything below; the acceptor is touched only under it
  std::optional<tcp::acceptor> acceptor;
  bool started = false;
  bool stopped = false;
  tcp::endpoint bound;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions;
};

// One client connection. Every member is touched only on the connection's strand.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(std::shared_ptr<ServerCore> server, tcp::socket socket, std::string remote)
      : server_(std::move(server)), stream_(std::move(socket)), remote_(std::move(remote)) {
    AddOpenConnections(1);
  }
  ~Session() {
    server_->Remove(this);
    AddOpenConnections(-1);
  }

  void Begin() {
    asio::post(stream_.get_executor(), [self = shared_from_this()] { self->WaitForRequest(); });
  }
  void Close() {
    asio::post(stream_.get_executor(), [self = shared_from_this()] { self->DoClose(); });
  }

 private:
  const HttpServerOptions& opts() const { return server_->opts; }

  // The idle timeout covers the wait for a request's first byte; the read timeout the rest.
  void WaitForRequest() {
    if (closed_) return;
    if (buffer_.size() > 0) return ReadRequest();
    stream_.expires_after(Ms(opts().idle_timeout_ms));
    stream_.async_read_some(buffer_.prepare(4096),
                            [self = shared_from_this()](error_code ec, size_t n) {
                              if (ec) return self->DoClose();
                              self->buffer_.commit(n);
                              self->ReadRequest();
                            });
  }

  void ReadRequest() {
    if (closed_) return;
    parser_.emplace();
    parser_->body_limit(opts().max_body_bytes);
    parser_->header_limit(static_cast<uint32_t>(
        std::min<size_t>(opts().max_header_bytes, std::numeric_limits<uint32_t>::max())));
    stream_.expires_after(Ms(opts().read_timeout_ms));
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(error_code ec) {
    if (closed_) return;
    if (ec == http::error::body_limit) {
      return SendAndClose(PlainText(413, "request body exceeds the limit of " +
                                             std::to_string(opts().max_body_bytes) + " bytes"));
    }
    if (ec == http::error::header_limit) {
      return SendAndClose(PlainText(431, "request headers exceed the limit of " +
                                             std::to_string(opts().max_header_bytes) + " bytes"));
    }
    if (ec && ec.category() == http::make_error_code(http::error::end_of_stream).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message) {
      return SendAndClose(PlainText(400, "malformed HTTP request: " + ec.message()));
    }
    if (ec) return DoClose();  // eof, reset, timeout: nobody to answer
    Dispatch();
  }

  void Dispatch() {
    http::request<http::string_body> msg = parser_->release();
    parser_.reset();
    version_ = msg.version();
    keep_alive_ = msg.keep_alive();
    head_ = msg.method() == http::verb::head;

    HttpRequest req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    if (!ParseTarget(req.target, &req.path, &req.query)) {
      return SendAndClose(PlainText(400, "malformed request target"));
    }
    for (const auto& field : msg) {
      req.headers.emplace_back(Lower(field.name_string()), std::string(field.value()));
    }
    req.body = std::move(msg.body());
    req.remote = remote_;

    awaiting_response_ = true;
    stream_.expires_never();  // a blocking query may park for minutes
    pending_self_ = shared_from_this();
    ++seq_;
    WatchForHangup(seq_);
    Responder respond = MakeResponder(seq_);
    try {
      server_->handler(std::move(req), respond);
    } catch (const std::exception& e) {
      HLOG_ERROR("http_handler_exception", "remote={} what=\"{}\"", remote_, e.what());
      respond(PlainText(500, "internal error"));
    } catch (...) {
      HLOG_ERROR("http_handler_exception", "remote={} what=unknown", remote_);
      respond(PlainText(500, "internal error"));
    }
  }

  // A client that hangs up while its request is parked frees the connection at once; bytes of a
  // pipelined request simply wait in the kernel until the answer is written. seq ties the wait to
  // its request: a wait that outlives it must not judge a later one.
  void WatchForHangup(uint64_t seq) {
    stream_.socket().async_wait(tcp::socket::wait_read, [self = shared_from_this(),
                                                         seq](error_code ec) {
      if (ec || self->closed_ || !self->awaiting_response_ || seq != self->seq_) return;
      // The reactor may report readiness spuriously, so peek to tell EOF from "nothing yet".
      char byte;
      ssize_t n = ::recv(self->stream_.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        return self->DoClose();
      }
      if (n < 0) self->WatchForHangup(seq);
    });
  }

  // The responder may run on any thread and more than once; only the first call counts and it
  // hops onto this connection's strand. It holds the session weakly so a responder kept after the
  // connection (or the runtime) is gone touches nothing; seq keeps a stale responder from
  // answering a later request.
  Responder MakeResponder(uint64_t seq) {
    auto used = std::make_shared<std::atomic<bool>>(false);
    std::weak_ptr<Session> weak = weak_from_this();
    return [weak, seq, used](HttpResponse r) {
      if (used->exchange(true)) return;
      auto self = weak.lock();
      if (!self) return;
      asio::post(self->stream_.get_executor(),
                 [self, seq, r = std::move(r)]() mutable { self->OnResponse(std::move(r), seq); });
    };
  }

  void OnResponse(HttpResponse r, uint64_t seq) {
    if (closed_ || !awaiting_response_ || seq != seq_) return;
    awaiting_response_ = false;
    pending_self_.reset();  // the caller holds a reference
    error_code ignored;
    stream_.socket().cancel(ignored);  // ends WatchForHangup's wait
    Write(std::move(r), keep_alive_);
  }

  void SendAndClose(HttpResponse r) {
    parser_.reset();
    Write(std::move(r), false);
  }

  http::response<http::string_body> Build(HttpResponse r, bool keep_alive) const {
    int status = (r.status < 100 || r.status > 999) ? 500 : r.status;
    http::response<http::string_body> res;
    res.version(version_);
    res.result(static_cast<unsigned>(status));
    res.set(http::field::server, "haven");
    if (!r.content_type.empty() && !HasLineBreak(r.content_type)) {
      res.set(http::field::content_type, r.content_type);
    }
    for (const auto& [name, value] : r.headers) {
      if (name.empty() || HasLineBreak(name) || HasLineBreak(value)) continue;  // no injection
      res.insert(name, value);
    }
    res.keep_alive(keep_alive);
    bool no_body = status < 200 || status == 204 || status == 304;
    if (no_body) return res;
    if (head_) {
      res.content_length(r.body.size());
      return res;
    }
    res.body() = std::move(r.body);
    res.prepare_payload();
    return res;
  }

  void Write(HttpResponse r, bool keep_alive) {
    if (closed_) return;
    {
      std::lock_guard lock(server_->mu);
      if (server_->stopped) keep_alive = false;
    }
    response_ =
        std::make_shared<http::response<http::string_body>>(Build(std::move(r), keep_alive));
    stream_.expires_after(Ms(opts().read_timeout_ms));
    http::async_write(stream_, *response_,
                      [self = shared_from_this(), keep_alive](error_code ec, size_t) {
                        self->response_.reset();
                        if (ec) return self->DoClose();
                        if (!keep_alive) return self->LingeringClose();
                        self->WaitForRequest();
                      });
  }

  // Half-closes and reads what the client still sends, so it gets our answer and not a reset.
  void LingeringClose() {
    if (closed_) return;
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(Ms(kDrainTimeoutMs));
    buffer_.consume(buffer_.size());
    Drain();
  }

  void Drain() {
    stream_.async_read_some(buffer_.prepare(64 << 10),
                            [self = shared_from_this()](error_code ec, size_t n) {
                              self->drained_ += n;
                              self->buffer_.consume(self->buffer_.size());
                              if (ec || self->closed_ || self->drained_ > kMaxDrainBytes) {
                                return self->DoClose();
                              }
                              self->Drain();
                            });
  }

  void DoClose() {
    if (closed_) return;
    closed_ = true;
    pending_self_.reset();  // every caller holds a reference
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  std::shared_ptr<ServerCore> server_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<http::response<http::string_body>> response_;
  std::string remote_;
  unsigned version_ = 11;
  bool keep_alive_ = true;
  bool head_ = false;
  bool closed_ = false;
  bool awaiting_response_ = false;
  uint64_t seq_ = 0;
  size_t drained_ = 0;
  // Keeps the session alive while the handler holds only a weak responder.
  std::shared_ptr<Session> pending_self_;
};

void ServerCore::Remove(Session* s) {
  std::lock_guard lock(mu);
  sessions.erase(s);
}

void ServerCore::DoAccept() {
  // Caller holds mu. Each connection gets its own strand.
  if (stopped || !acceptor) return;
  acceptor->async_accept(asio::make_strand(runtime.context()),
                         [self = shared_from_this()](error_code ec, tcp::socket socket) {
                           self->OnAccept(ec, std::move(socket));
                         });
}

void ServerCore::OnAccept(error_code ec, tcp::socket socket) {
  std::unique_lock lock(mu);
  if (stopped) return;
  if (ec == asio::error::operation_aborted) return;
  if (ec) {
    // Out of descriptors and the like: back off instead of spinning.
    HLOG_WARN("http_accept_failed", "error=\"{}\"", ec.message());
    lock.unlock();
    runtime.RunAfter(100, [self = shared_from_this()] {
      std::lock_guard l(self->mu);
      self->DoAccept();
    });
    return;
  }
  error_code ep_ec;
  tcp::endpoint peer = socket.remote_endpoint(ep_ec);
  std::string remote = ep_ec ? "unknown" : FormatEndpoint(peer);
  if (sessions.size() >= opts.max_connections) {
    HLOG_WARN("http_connection_refused", "remote={} reason=max_connections limit={}", remote,
              opts.max_connections);
    static constexpr std::string_view kBusy =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n"
        "Connection: close\r\n\r\ntoo many connections\n";
    error_code ignored;
    socket.non_blocking(true, ignored);
    socket.write_some(asio::buffer(kBusy), ignored);
    socket.close(ignored);
  } else {
    auto session = std::make_shared<Session>(shared_from_this(), std::move(socket), remote);
    sessions.emplace(session.get(), session);
    session->Begin();
  }
  DoAccept();
}

// The header's pimpl name for the core that sessions share.
struct HttpServer::Impl : ServerCore {
  using ServerCore::ServerCore;
};

HttpServer::HttpServer(IoRuntime& runtime, HttpServerOptions options, HttpHandler handler)
    : impl_(std::make_shared<Impl>(runtime, std::move(options), std::move(handler))) {}

HttpServer::~HttpServer() { Stop(); }

Status HttpServer::Start() {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  if (s.started) return Status::InvalidArgument("http server already started");
  std::string where = s.opts.host + ":" + std::to_string(s.opts.port);
  error_code ec;
  tcp::resolver resolver(s.runtime.context());
  auto results = resolver.resolve(s.opts.host, std::to_string(s.opts.port),
                                  tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || results.empty()) {
    return Status::InvalidArgument("listen " + where + ": cannot resolve host: " + ec.message());
  }
  tcp::endpoint ep = results.begin()->endpoint();
  tcp::acceptor acc(s.runtime.context());
  acc.open(ep.protocol(), ec);
  if (!ec) acc.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acc.bind(ep, ec);
  if (!ec) acc.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Status::IoError("listen " + where + ": " + ec.message());
  s.bound = acc.local_endpoint(ec);
  if (ec) return Status::IoError("listen " + where + ": " + ec.message());
  s.acceptor.emplace(std::move(acc));
  s.started = true;
  s.DoAccept();
  HLOG_INFO("http_listening", "addr={}", FormatEndpoint(s.bound));
  return Status::Ok();
}

uint16_t HttpServer::port() const {
  std::lock_guard lock(impl_->mu);
  return impl_->bound.port();
}

std::string HttpServer::address() const {
  std::lock_guard lock(impl_->mu);
  return FormatEndpoint(impl_->bound);
}

void HttpServer::Stop() {
  std::vector<std::shared_ptr<Session>> open;
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->stopped) return;
    impl_->stopped = true;
    if (impl_->acceptor) {
      error_code ignored;
      impl_->acceptor->close(ignored);
    }
    for (auto& [ptr, weak] : impl_->sessions) {
      if (auto s = weak.lock()) open.push_back(std::move(s));
    }
  }
  for (auto& s : open) s->Close();
  if (impl_->started) HLOG_INFO("http_stopped", "connections={}", open.size());
}

}  // namespace haven::net
