// load: a closed-loop HTTP write-load generator for the registry benchmark. It drives either haven
// (Consul KV PUT, or agent service registration) or etcd's v3 JSON gateway (kv/put) with N
// concurrent keep-alive connections, bounded by a request count and a duration, and prints
// throughput and latency percentiles as one key=value line that bench/registry/run.sh parses.
#include <algorithm>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include "base/base64.h"
#include "base/duration.h"
#include "base/status.h"

namespace haven::bench {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using SteadyClock = std::chrono::steady_clock;

// Hard limits: a typo on the command line must not exhaust the machine.
constexpr int kMaxConnections = 4096;
constexpr int kMaxThreads = 64;
constexpr int64_t kMaxRequests = 10'000'000;
constexpr int64_t kMaxDurationMs = 3'600'000;
constexpr size_t kMaxValueSize = 512 * 1024;
constexpr int64_t kMaxTimeoutMs = 600'000;
constexpr uint64_t kResponseBodyLimit = 1 << 20;
constexpr int kMaxReconnects =
    16;  // per connection; then it gives up and the run goes on without it
constexpr int kMaxErrorsPrinted = 5;

enum class Target { kHavenKv, kHavenRegister, kEtcdPut };

struct Options {
  Target target = Target::kHavenKv;
  std::string target_name = "haven-kv";
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  int connections = 64;
  int threads = 2;
  int64_t requests = 20'000;
  int64_t duration_ms = 30'000;
  size_t value_size = 16;
  int64_t timeout_ms = 10'000;
  std::string run_id;  // keeps keys and service IDs unique across runs against the same data dir
};

Result<Target> ParseTarget(const std::string& name) {
  if (name == "haven-kv") return Target::kHavenKv;
  if (name == "haven-register") return Target::kHavenRegister;
  if (name == "etcd") return Target::kEtcdPut;
  return Status::InvalidArgument("--target must be haven-kv, haven-register or etcd, got " + name);
}

Status CheckRange(const char* flag, int64_t value, int64_t lo, int64_t hi) {
  if (value >= lo && value <= hi) return Status::Ok();
  return Status::InvalidArgument(
      fmt::format("{} must be in [{}, {}], got {}", flag, lo, hi, value));
}

Status ValidateOptions(const Options& o) {
  for (const Status& s : {CheckRange("--connections", o.connections, 1, kMaxConnections),
                          CheckRange("--threads", o.threads, 1, kMaxThreads),
                          CheckRange("--requests", o.requests, 1, kMaxRequests),
                          CheckRange("--duration", o.duration_ms, 1, kMaxDurationMs),
                          CheckRange("--value-size", static_cast<int64_t>(o.value_size), 1,
                                     static_cast<int64_t>(kMaxValueSize)),
                          CheckRange("--timeout", o.timeout_ms, 1, kMaxTimeoutMs),
                          CheckRange("--port", o.port, 1, 65535)}) {
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

// Builds the request body and target for request number i; one function per protocol.
class RequestFactory {
 public:
  explicit RequestFactory(const Options& o)
      : target_(o.target),
        host_(o.host),
        run_id_(o.run_id),
        value_(o.value_size, 'x'),
        value_b64_(Base64Encode(value_)) {}

  void Fill(int64_t i, http::request<http::string_body>& req) const {
    req.clear();
    req.version(11);
    req.keep_alive(true);
    req.set(http::field::host, host_);
    switch (target_) {
      case Target::kHavenKv:
        FillHavenKv(i, req);
        break;
      case Target::kHavenRegister:
        FillHavenRegister(i, req);
        break;
      case Target::kEtcdPut:
        FillEtcdPut(i, req);
        break;
    }
    req.prepare_payload();
  }

 private:
  std::string Key(int64_t i) const { return fmt::format("bench/{}/{}", run_id_, i); }

  void FillHavenKv(int64_t i, http::request<http::string_body>& req) const {
    req.method(http::verb::put);
    req.target("/v1/kv/" + Key(i));
    req.set(http::field::content_type, "application/octet-stream");
    req.body() = value_;
  }

  void FillHavenRegister(int64_t i, http::request<http::string_body>& req) const {
    req.method(http::verb::put);
    req.target("/v1/agent/service/register");
    req.set(http::field::content_type, "application/json");
    req.body() =
        fmt::format(R"({{"ID":"bench-{}-{}","Name":"bench","Address":"127.0.0.1","Port":{}}})",
                    run_id_, i, 1024 + i % 60000);
  }

  // etcd 3.4 serves the gateway at /v3/* (and still /v3beta/*); keys and values are base64 bytes.
  void FillEtcdPut(int64_t i, http::request<http::string_body>& req) const {
    req.method(http::verb::post);
    req.target("/v3/kv/put");
    req.set(http::field::content_type, "application/json");
    req.body() = fmt::format(R"({{"key":"{}","value":"{}"}})", Base64Encode(Key(i)), value_b64_);
  }

  Target target_;
  std::string host_;
  std::string run_id_;
  std::string value_;
  std::string value_b64_;
};

// What every connection shares: the request budget, the deadline and the results of one thread.
class Budget {
 public:
  Budget(int64_t requests, SteadyClock::time_point deadline)
      : requests_(requests), deadline_(deadline) {}

  // Hands out the next request number, or nothing once the count or the time is used up.
  std::optional<int64_t> Claim() {
    if (SteadyClock::now() >= deadline_) return std::nullopt;
    const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= requests_) return std::nullopt;
    return i;
  }

  void SetDeadline(SteadyClock::time_point deadline) { deadline_ = deadline; }

 private:
  const int64_t requests_;
  SteadyClock::time_point deadline_;
  std::atomic<int64_t> next_{0};
};

// Per-thread tallies, merged after the run so the hot path takes no lock.
struct Tally {
  std::vector<uint32_t> latencies_us;
  int64_t ok = 0;
  int64_t http_errors = 0;
  int64_t io_errors = 0;
  int errors_printed = 0;
  SteadyClock::time_point last_done{};
};

// One keep-alive connection that sends requests back to back until the budget is spent.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(asio::io_context& io, const tcp::resolver::results_type& endpoints,
             const RequestFactory& factory, Budget& budget, Tally& tally,
             std::chrono::milliseconds timeout)
      : stream_(io),
        endpoints_(endpoints),
        factory_(factory),
        budget_(budget),
        tally_(tally),
        timeout_(timeout) {}

  // Connects only; Run() starts the load once every connection is up.
  void Connect() {
    stream_.expires_after(timeout_);
    stream_.async_connect(endpoints_,
                          [self = shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
                            if (ec) self->NoteIoError("connect", ec);
                            self->connected_ = !ec;
                          });
  }

  bool connected() const { return connected_; }

  void Run() { SendNext(); }

 private:
  void SendNext() {
    const std::optional<int64_t> i = budget_.Claim();
    if (!i) {
      beast::error_code ignored;
      stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
      return;
    }
    factory_.Fill(*i, req_);
    started_ = SteadyClock::now();
    stream_.expires_after(timeout_);
    http::async_write(stream_, req_, [self = shared_from_this()](beast::error_code ec, size_t) {
      self->OnWrite(ec);
    });
  }

  void OnWrite(beast::error_code ec) {
    if (ec) return Reconnect("write", ec);
    parser_.emplace();
    parser_->body_limit(kResponseBodyLimit);
    http::async_read(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    if (ec) return Reconnect("read", ec);
    const auto now = SteadyClock::now();
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(now - started_).count();
    tally_.latencies_us.push_back(static_cast<uint32_t>(std::min<int64_t>(us, UINT32_MAX)));
    tally_.last_done = now;
    const auto& res = parser_->get();
    if (res.result_int() / 100 == 2) {
      ++tally_.ok;
    } else {
      ++tally_.http_errors;
      PrintError(fmt::format("HTTP {}: {}", res.result_int(), res.body().substr(0, 200)));
    }
    if (!res.keep_alive()) return Reconnect("server closed", {});
    SendNext();
  }

  // A failed request is counted and the connection rebuilt, a bounded number of times.
  void Reconnect(const char* what, beast::error_code ec) {
    if (ec) NoteIoError(what, ec);
    if (++reconnects_ > kMaxReconnects) {
      PrintError(fmt::format("connection gave up after {} reconnects", kMaxReconnects));
      return;
    }
    beast::error_code ignored;
    stream_.socket().close(ignored);
    buffer_.clear();
    stream_.expires_after(timeout_);
    stream_.async_connect(endpoints_,
                          [self = shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
                            if (ec) return self->Reconnect("reconnect", ec);
                            self->SendNext();
                          });
  }

  void NoteIoError(const char* what, beast::error_code ec) {
    ++tally_.io_errors;
    PrintError(fmt::format("{}: {}", what, ec.message()));
  }

  void PrintError(const std::string& message) {
    if (tally_.errors_printed++ < kMaxErrorsPrinted) {
      fmt::print(stderr, "load: error {}\n", message);
    }
  }

  beast::tcp_stream stream_;
  const tcp::resolver::results_type& endpoints_;
  const RequestFactory& factory_;
  Budget& budget_;
  Tally& tally_;
  std::chrono::milliseconds timeout_;
  beast::flat_buffer buffer_;
  http::request<http::string_body> req_;
  std::optional<http::response_parser<http::string_body>> parser_;
  SteadyClock::time_point started_{};
  bool connected_ = false;
  int reconnects_ = 0;
};

// One event loop thread and the connections it owns.
struct Worker {
  asio::io_context io{1};
  Tally tally;
  std::vector<std::shared_ptr<Connection>> connections;
};

// Runs every worker's io_context to completion on its own thread.
void RunAll(std::vector<std::unique_ptr<Worker>>& workers) {
  std::vector<std::thread> threads;
  for (auto& w : workers) {
    w->io.restart();
    threads.emplace_back([&io = w->io] { io.run(); });
  }
  for (auto& t : threads) t.join();
}

double Percentile(const std::vector<uint32_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  const auto rank = static_cast<size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(rank, sorted.size() - 1)] / 1000.0;
}

void PrintResult(const Options& o, std::vector<std::unique_ptr<Worker>>& workers,
                 SteadyClock::time_point start) {
  Tally all;
  for (auto& w : workers) {
    all.ok += w->tally.ok;
    all.http_errors += w->tally.http_errors;
    all.io_errors += w->tally.io_errors;
    all.last_done = std::max(all.last_done, w->tally.last_done);
    all.latencies_us.insert(all.latencies_us.end(), w->tally.latencies_us.begin(),
                            w->tally.latencies_us.end());
  }
  std::sort(all.latencies_us.begin(), all.latencies_us.end());
  const double seconds =
      all.last_done > start ? std::chrono::duration<double>(all.last_done - start).count() : 0;
  const double rps = seconds > 0 ? static_cast<double>(all.ok) / seconds : 0;
  fmt::print(
      "target={} connections={} ok={} http_errors={} io_errors={} seconds={:.3f} rps={:.1f} "
      "p50_ms={:.3f} p99_ms={:.3f} max_ms={:.3f}\n",
      o.target_name, o.connections, all.ok, all.http_errors, all.io_errors, seconds, rps,
      Percentile(all.latencies_us, 0.50), Percentile(all.latencies_us, 0.99),
      all.latencies_us.empty() ? 0.0 : all.latencies_us.back() / 1000.0);
}

Result<tcp::resolver::results_type> Resolve(const Options& o) {
  asio::io_context io;
  tcp::resolver resolver(io);
  beast::error_code ec;
  auto endpoints = resolver.resolve(o.host, std::to_string(o.port), ec);
  if (ec) return Status::InvalidArgument(fmt::format("resolve {}: {}", o.host, ec.message()));
  return endpoints;
}

// Connects every connection, then starts the clock and the load; returns the process exit code.
int Run(const Options& o) {
  auto endpoints = Resolve(o);
  if (!endpoints.ok()) {
    fmt::print(stderr, "load: {}\n", endpoints.status().ToString());
    return 2;
  }
  const RequestFactory factory(o);
  Budget budget(o.requests, SteadyClock::time_point::max());
  const int threads = std::min(o.threads, o.connections);
  std::vector<std::unique_ptr<Worker>> workers;
  for (int t = 0; t < threads; ++t) workers.push_back(std::make_unique<Worker>());
  for (int c = 0; c < o.connections; ++c) {
    Worker& w = *workers[c % threads];
    w.tally.latencies_us.reserve(
        static_cast<size_t>(std::min<int64_t>(o.requests / threads + 1, 1 << 20)));
    w.connections.push_back(std::make_shared<Connection>(w.io, *endpoints, factory, budget, w.tally,
                                                         std::chrono::milliseconds(o.timeout_ms)));
    w.connections.back()->Connect();
  }
  RunAll(workers);
  for (auto& w : workers) {
    for (auto& c : w->connections) {
      if (!c->connected()) {
        fmt::print(stderr, "load: could not connect to {}:{}\n", o.host, o.port);
        return 1;
      }
    }
  }
  const auto start = SteadyClock::now();
  budget.SetDeadline(start + std::chrono::milliseconds(o.duration_ms));
  for (auto& w : workers) {
    for (auto& c : w->connections) c->Run();
  }
  RunAll(workers);
  PrintResult(o, workers, start);
  int64_t errors = 0;
  for (auto& w : workers) errors += w->tally.http_errors + w->tally.io_errors;
  return errors == 0 ? 0 : 1;
}

Result<int64_t> ParseDurationFlag(const std::string& flag, const std::string& text) {
  auto ms = ParseDurationMs(text);
  if (!ms.ok()) return Status::InvalidArgument(flag + ": " + ms.status().message());
  return ms;
}

}  // namespace

// Returns the exit code: 0 all requests succeeded, 1 some failed, 2 bad usage.
int Main(int argc, char** argv) {
  Options o;
  std::string duration = "30s";
  std::string timeout = "10s";
  CLI::App app{"Closed-loop write load against haven (Consul API) or etcd (v3 JSON gateway)."};
  app.add_option("--target", o.target_name, "haven-kv | haven-register | etcd")->required();
  app.add_option("--host", o.host, "server address");
  app.add_option("--port", o.port, "server HTTP port")->required();
  app.add_option("--connections", o.connections, "concurrent keep-alive connections");
  app.add_option("--threads", o.threads, "event loop threads of the generator");
  app.add_option("--requests", o.requests, "stop after this many requests");
  app.add_option("--duration", duration, "stop after this long (e.g. 30s)");
  app.add_option("--value-size", o.value_size, "bytes per value");
  app.add_option("--timeout", timeout, "per-request timeout (e.g. 10s)");
  app.add_option("--run-id", o.run_id, "prefix that keeps keys unique across runs");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto target = ParseTarget(o.target_name);
  auto duration_ms = ParseDurationFlag("--duration", duration);
  auto timeout_ms = ParseDurationFlag("--timeout", timeout);
  for (const Status* s : {&target.status(), &duration_ms.status(), &timeout_ms.status()}) {
    if (!s->ok()) {
      fmt::print(stderr, "load: {}\n", s->message());
      return 2;
    }
  }
  o.target = *target;
  o.duration_ms = *duration_ms;
  o.timeout_ms = *timeout_ms;
  if (o.run_id.empty()) {
    o.run_id = std::to_string(SteadyClock::now().time_since_epoch().count());
  }
  if (Status s = ValidateOptions(o); !s.ok()) {
    fmt::print(stderr, "load: {}\n", s.message());
    return 2;
  }
  return Run(o);
}

}  // namespace haven::bench

int main(int argc, char** argv) { return haven::bench::Main(argc, argv); }
