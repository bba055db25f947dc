#include "net/probe.h"

#include <algorithm>
#include <atomic>
#include <chrono>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/url/parse.hpp>

namespace haven::net {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using SteadyTime = std::chrono::steady_clock::time_point;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
constexpr size_t kMaxOutput = 4096;  // Consul keeps the first 4 KiB of a check's output
constexpr int64_t kMaxTimeoutMs = int64_t{3600} * 1000;

ProbeResult Critical(std::string output) { return {"critical", std::move(output)}; }

// Calls done exactly once: from the probe or from the watchdog at the deadline, whichever is
// first, so a hung resolver cannot make a probe outlive its timeout.
struct ProbeState {
  ProbeState(asio::strand<asio::io_context::executor_type> ex, std::function<void(ProbeResult)> fn,
             int64_t timeout)
      : strand(ex), done(std::move(fn)), watchdog(ex), timeout_ms(timeout) {}

  void Finish(ProbeResult r) {
    if (fired.exchange(true)) return;
    watchdog.cancel();
    auto fn = std::move(done);
    fn(std::move(r));
  }

  asio::strand<asio::io_context::executor_type> strand;
  std::function<void(ProbeResult)> done;
  asio::steady_timer watchdog;
  int64_t timeout_ms;
  SteadyTime deadline;
  std::atomic<bool> fired{false};
};

std::string ErrorText(const error_code& ec, int64_t timeout_ms) {
  if (ec == beast::error::timeout || ec == asio::error::timed_out) {
    return "timed out after " + std::to_string(timeout_ms) + " ms";
  }
  return ec.message();
}

// Starts the watchdog and the probe coroutine on one strand.
template <typename MakeProbe>
void Launch(IoRuntime& runtime, int64_t timeout_ms, std::function<void(ProbeResult)> done,
            std::string timeout_prefix, MakeProbe make_probe) {
  timeout_ms = std::clamp<int64_t>(timeout_ms, 1, kMaxTimeoutMs);
  auto st = std::make_shared<ProbeState>(asio::make_strand(runtime.context()), std::move(done),
                                         timeout_ms);
  st->deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  st->watchdog.expires_at(st->deadline);
  st->watchdog.async_wait([st, timeout_prefix](error_code ec) {
    if (!ec)
      st->Finish(
          Critical(timeout_prefix + ": " + ErrorText(beast::error::timeout, st->timeout_ms)));
  });
  asio::co_spawn(st->strand, make_probe(st), [st, timeout_prefix](std::exception_ptr ep) {
    if (!ep) return;
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      st->Finish(Critical(timeout_prefix + ": " + e.what()));
    } catch (...) {
      st->Finish(Critical(timeout_prefix + ": probe failed"));
    }
  });
}

struct HttpTarget {
  bool tls = false;
  std::string host;  // without brackets, for resolving and SNI
  std::string port;
  std::string host_header;
  std::string target;  // path and query
};

bool ParseHttpUrl(const std::string& url, HttpTarget* out, std::string* error) {
  auto u = boost::urls::parse_uri(url);
  if (!u) {
    *error = "invalid url";
    return false;
  }
  if (u->scheme() != "http" && u->scheme() != "https") {
    *error = "unsupported scheme \"" + std::string(u->scheme()) + "\"";
    return false;
  }
  out->tls = u->scheme() == "https";
  out->host = std::string(u->encoded_host_address());
  if (out->host.size() > 2 && out->host.front() == '[') {
    out->host = out->host.substr(1, out->host.size() - 2);
  }
  if (out->host.empty()) {
    *error = "no host in url";
    return false;
  }
  out->port = u->has_port() ? std::string(u->port()) : (out->tls ? "443" : "80");
  out->host_header = std::string(u->encoded_host_and_port());
  out->target = std::string(u->encoded_path());
  if (out->target.empty()) out->target = "/";
  if (u->has_query()) out->target += "?" + std::string(u->encoded_query());
  return true;
}

bool IsToken(std::string_view s) {
  if (s.empty() || s.size() > 32) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
  });
}

bool HasLineBreak(std::string_view s) { return s.find_first_of("\r\n") != std::string_view::npos; }

ssl::context MakeTlsContext(bool verify) {
  ssl::context ctx(ssl::context::tls_client);
  if (verify) {
    ctx.set_default_verify_paths();
    ctx.set_verify_mode(ssl::verify_peer);
  } else {
    ctx.set_verify_mode(ssl::verify_none);
  }
  return ctx;
}

// Contexts are immutable after set-up, so one of each is shared by every probe.
ssl::context& TlsContext(bool verify) {
  static ssl::context verifying = MakeTlsContext(true);
  static ssl::context skipping = MakeTlsContext(false);
  return verify ? verifying : skipping;
}

// Writes the request and reads the status and at most 4 KiB of the body.
template <typename Stream>
asio::awaitable<ProbeResult> Exchange(Stream& stream, const http::request<http::empty_body>& req,
                                      const std::string& prefix, int64_t timeout_ms) {
  auto [wec, wn] = co_await http::async_write(stream, req, kNoThrow);
  if (wec) co_return Critical(prefix + ": " + ErrorText(wec, timeout_ms));
  beast::flat_buffer buffer;
  http::response_parser<http::buffer_body> parser;
  parser.skip(req.method() == http::verb::head);
  auto [hec, hn] = co_await http::async_read_header(stream, buffer, parser, kNoThrow);
  if (hec) co_return Critical(prefix + ": " + ErrorText(hec, timeout_ms));
  std::string body;
  char chunk[kMaxOutput];
  while (!parser.is_done() && body.size() < kMaxOutput) {
    parser.get().body().data = chunk;
    parser.get().body().size = sizeof(chunk);
    auto [bec, bn] = co_await http::async_read(stream, buffer, parser, kNoThrow);
    body.append(chunk, sizeof(chunk) - parser.get().body().size);
    if (bec && bec != http::error::need_buffer) break;  // the status already decides
  }
  if (body.size() > kMaxOutput) body.resize(kMaxOutput);
  const auto& res = parser.get();
  unsigned code = res.result_int();
  std::string reason(res.reason());
  if (reason.empty()) reason = std::string(http::obsolete_reason(res.result()));
  std::string status = (code >= 200 && code < 300) ? "passing"
                       : code == 429               ? "warning"
                                                   : "critical";
  co_return ProbeResult{status,
                        prefix + ": " + std::to_string(code) + " " + reason + " Output: " + body};
}

asio::awaitable<void> RunHttpProbe(std::shared_ptr<ProbeState> st, HttpTarget t,
                                   http::request<http::empty_body> req, bool tls_skip_verify,
                                   std::string prefix) {
  auto ex = co_await asio::this_coro::executor;
  tcp::resolver resolver(ex);
  auto [rec, endpoints] = co_await resolver.async_resolve(t.host, t.port, kNoThrow);
  if (rec) co_return st->Finish(Critical(prefix + ": resolve " + t.host + ": " + rec.message()));
  beast::tcp_stream tcp_stream(ex);
  tcp_stream.expires_at(st->deadline);
  auto [cec, ep] = co_await tcp_stream.async_connect(endpoints, kNoThrow);
  if (cec) {
    co_return st->Finish(Critical(prefix + ": connect " + t.host + ":" + t.port + ": " +
                                  ErrorText(cec, st->timeout_ms)));
  }
  if (!t.tls) co_return st->Finish(co_await Exchange(tcp_stream, req, prefix, st->timeout_ms));

  beast::ssl_stream<beast::tcp_stream> tls(std::move(tcp_stream), TlsContext(!tls_skip_verify));
  if (!SSL_set_tlsext_host_name(tls.native_handle(), t.host.c_str())) {
    co_return st->Finish(Critical(prefix + ": cannot set TLS server name"));
  }
  if (!tls_skip_verify) tls.set_verify_callback(ssl::host_name_verification(t.host));
  auto [hec] = co_await tls.async_handshake(ssl::stream_base::client, kNoThrow);
  if (hec) {
    co_return st->Finish(Critical(prefix + ": TLS handshake: " + ErrorText(hec, st->timeout_ms)));
  }
  st->Finish(co_await Exchange(tls, req, prefix, st->timeout_ms));
}

asio::awaitable<void> RunTcpProbe(std::shared_ptr<ProbeState> st, std::string host,
                                  std::string port, std::string prefix) {
  auto ex = co_await asio::this_coro::executor;
  tcp::resolver resolver(ex);
  auto [rec, endpoints] = co_await resolver.async_resolve(host, port, kNoThrow);
  if (rec) co_return st->Finish(Critical(prefix + ": resolve " + host + ": " + rec.message()));
  beast::tcp_stream stream(ex);
  stream.expires_at(st->deadline);
  auto [cec, ep] = co_await stream.async_connect(endpoints, kNoThrow);
  if (cec) co_return st->Finish(Critical(prefix + ": " + ErrorText(cec, st->timeout_ms)));
  st->Finish({"passing", prefix + ": Success"});
}

// Splits "host:port" or "[v6]:port"; the port must be a number in 1..65535.
bool SplitHostPort(const std::string& hp, std::string* host, std::string* port) {
  size_t colon = hp.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= hp.size()) return false;
  *host = hp.substr(0, colon);
  *port = hp.substr(colon + 1);
  if (host->size() > 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  if (port->size() > 5 || !std::all_of(port->begin(), port->end(), ::isdigit)) return false;
  int p = std::stoi(*port);
  return p > 0 && p <= 65535;
}

}  // namespace

void ProbeHttp(IoRuntime& runtime, const std::string& method, const std::string& url,
               const std::vector<std::pair<std::string, std::string>>& headers,
               bool tls_skip_verify, int64_t timeout_ms, std::function<void(ProbeResult)> done) {
  std::string verb = method.empty() ? "GET" : method;
  std::string prefix = "HTTP " + verb + " " + url;
  HttpTarget t;
  std::string error;
  if (!IsToken(verb)) error = "invalid method";
  if (error.empty() && !ParseHttpUrl(url, &t, &error))
    error = error.empty() ? "invalid url" : error;
  http::request<http::empty_body> req;
  if (error.empty()) {
    req.method_string(verb);
    req.target(t.target);
    req.version(11);
    req.set(http::field::host, t.host_header);
    req.set(http::field::user_agent, "Consul Health Check");
    req.set(http::field::accept, "text/plain, text/*, */*");
    for (const auto& [name, value] : headers) {
      if (!IsToken(name) || HasLineBreak(value)) {
        error = "invalid header \"" + name + "\"";
        break;
      }
      req.set(name, value);
    }
    req.keep_alive(false);
  }
  if (!error.empty()) {
    // Answered on the runtime like every other result, never inside the caller's stack.
    runtime.Post([done = std::move(done), r = Critical(prefix + ": " + error)] { done(r); });
    return;
  }
  Launch(runtime, timeout_ms, std::move(done), prefix,
         [t = std::move(t), req = std::move(req), tls_skip_verify, prefix](auto st) {
           return RunHttpProbe(st, t, req, tls_skip_verify, prefix);
         });
}

void ProbeTcp(IoRuntime& runtime, const std::string& host_port, int64_t timeout_ms,
              std::function<void(ProbeResult)> done) {
  std::string prefix = "TCP connect " + host_port;
  std::string host, port;
  if (!SplitHostPort(host_port, &host, &port)) {
    runtime.Post([done = std::move(done),
                  r = Critical(prefix + ": invalid address, want host:port")] { done(r); });
    return;
  }
  Launch(runtime, timeout_ms, std::move(done), prefix,
         [host, port, prefix](auto st) { return RunTcpProbe(st, host, port, prefix); });
}

}  // namespace haven::net
