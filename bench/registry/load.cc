// load: a closed-loop HTTP write-load generator for the registry benchmark. It drives either haven
// (Consul KV PUT, or agent service registration) or etcd's v3 JSON gateway (kv/put) with N
// concurrent keep-alive connections, bounded by a request count and a duration, and prints
// throughput and latency percentiles as one key=value line that bench/registry/run.sh parses.
// For the cluster benchmark (bench/cluster/run.sh) it can also spread its connections over several
// servers (--targets), move a failed connection to the next server (--failover), pause after a
// failure (--retry-backoff), and log every acknowledged write with its wall-clock time (--ack-log).
#include <algorithm>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
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
constexpr int kMaxReconnectsLimit = 1'000'000;
constexpr size_t kMaxTargets = 64;
constexpr size_t kMaxErrorKinds = 32;
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
  std::vector<std::string> targets;  // HOST:PORT each; connection c goes to targets[c % size]
  bool failover = false;             // a failed connection reconnects to the next target
  int max_reconnects = kMaxReconnects;
  int64_t retry_backoff_ms = 0;  // pause after a failed request before the next one
  std::string ack_log;           // file: one line per acknowledged write
};

// One server to send to: "HOST:PORT" split, or --host/--port.
struct Endpoint {
  std::string host;
  uint16_t port = 0;
};

Result<Endpoint> ParseEndpoint(const std::string& text) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size() ||
      text.size() - colon - 1 > 5) {
    return Status::InvalidArgument("--targets: expected HOST:PORT, got " + text);
  }
  int port = 0;
  for (char c : text.substr(colon + 1)) {
    if (c < '0' || c > '9') return Status::InvalidArgument("--targets: bad port in " + text);
    port = port * 10 + (c - '0');
  }
  if (port < 1 || port > 65535) return Status::InvalidArgument("--targets: bad port in " + text);
  return Endpoint{text.substr(0, colon), static_cast<uint16_t>(port)};
}

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
                          CheckRange("--max-reconnects", o.max_reconnects, 0, kMaxReconnectsLimit),
                          CheckRange("--retry-backoff", o.retry_backoff_ms, 0, kMaxTimeoutMs),
                          CheckRange("--targets (count)", static_cast<int64_t>(o.targets.size()), 0,
                                     static_cast<int64_t>(kMaxTargets))}) {
    if (!s.ok()) return s;
  }
  // Either one server (--port, --host) or a list (--targets).
  if (o.targets.empty()) return CheckRange("--port", o.port, 1, 65535);
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

  // True once no request will be handed out any more (the time is up or the count used).
  bool Exhausted() const {
    return SteadyClock::now() >= deadline_ || next_.load(std::memory_order_relaxed) >= requests_;
  }

 private:
  const int64_t requests_;
  SteadyClock::time_point deadline_;
  std::atomic<int64_t> next_{0};
};

// One acknowledged write: when (wall clock, to line up with a kill time taken by a script), which
// target the connection was on, and the request number (the key).
struct Ack {
  int64_t unix_us;
  uint32_t target;
  int64_t request;
};

// Per-thread tallies, merged after the run so the hot path takes no lock.
struct Tally {
  std::vector<uint32_t> latencies_us;
  std::vector<Ack> acks;  // only with --ack-log; bounded by --requests
  int64_t ok = 0;
  int64_t http_errors = 0;
  int64_t io_errors = 0;
  int errors_printed = 0;
  std::map<std::string, int64_t> error_kinds;  // only with --ack-log; keys are few (bounded below)
  SteadyClock::time_point last_done{};
};

// How a connection behaves on failure (the defaults are the single-server benchmark's).
struct FailurePolicy {
  bool failover = false;
  int max_reconnects = kMaxReconnects;
  std::chrono::milliseconds backoff{0};
  bool record_acks = false;
};

using TargetList = std::vector<tcp::resolver::results_type>;

// One keep-alive connection that sends requests back to back until the budget is spent.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(asio::io_context& io, const TargetList& targets, size_t target,
             const RequestFactory& factory, Budget& budget, Tally& tally,
             std::chrono::milliseconds timeout, const FailurePolicy& policy)
      : stream_(io),
        targets_(targets),
        target_(target % targets.size()),
        factory_(factory),
        budget_(budget),
        tally_(tally),
        timeout_(timeout),
        policy_(policy),
        backoff_timer_(io) {}

  // Connects only; Run() starts the load once every connection is up.
  void Connect() {
    stream_.expires_after(timeout_);
    stream_.async_connect(targets_[target_],
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
    request_ = *i;
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
    const bool ok = res.result_int() / 100 == 2;
    if (ok) {
      ++tally_.ok;
      if (policy_.record_acks) RecordAck();
    } else {
      ++tally_.http_errors;
      PrintError(fmt::format("HTTP {}: {}", res.result_int(), res.body().substr(0, 200)));
      CountErrorKind(fmt::format("HTTP {}", res.result_int()));
    }
    if (!res.keep_alive()) return Reconnect("server closed", {});
    if (!ok && policy_.backoff.count() > 0) {
      return AfterBackoff([self = shared_from_this()] { self->SendNext(); });
    }
    SendNext();
  }

  void RecordAck() {
    const auto unix_us = std::chrono::duration_cast<std::chrono::microseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
    tally_.acks.push_back(Ack{unix_us, static_cast<uint32_t>(target_), request_});
  }

  // Runs next after --retry-backoff (only called when it is set).
  template <typename Fn>
  void AfterBackoff(Fn next) {
    backoff_timer_.expires_after(policy_.backoff);
    backoff_timer_.async_wait([next = std::move(next)](beast::error_code) { next(); });
  }

  // A failed request is counted and the connection rebuilt, a bounded number of times; with
  // --failover on the next target, with --retry-backoff after a pause.
  void Reconnect(const char* what, beast::error_code ec) {
    if (ec) NoteIoError(what, ec);
    if (++reconnects_ > policy_.max_reconnects) {
      PrintError(fmt::format("connection gave up after {} reconnects", policy_.max_reconnects));
      return;
    }
    beast::error_code ignored;
    stream_.socket().close(ignored);
    buffer_.clear();
    if (policy_.failover) target_ = (target_ + 1) % targets_.size();
    if (policy_.backoff.count() > 0) {
      return AfterBackoff([self = shared_from_this()] { self->ConnectAgain(); });
    }
    ConnectAgain();
  }

  void ConnectAgain() {
    // Past the deadline nothing is sent any more: do not dial a server that may be gone.
    if (budget_.Exhausted()) return;
    stream_.expires_after(timeout_);
    stream_.async_connect(targets_[target_],
                          [self = shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
                            if (ec) return self->Reconnect("reconnect", ec);
                            self->SendNext();
                          });
  }

  void NoteIoError(const char* what, beast::error_code ec) {
    ++tally_.io_errors;
    PrintError(fmt::format("{}: {}", what, ec.message()));
    CountErrorKind(fmt::format("{}: {}", what, ec.message()));
  }

  // For the failover report: how many failures of each kind (timeouts vs. resets vs. HTTP 5xx).
  void CountErrorKind(const std::string& kind) {
    if (!policy_.record_acks) return;
    if (tally_.error_kinds.size() >= kMaxErrorKinds && !tally_.error_kinds.count(kind)) {
      ++tally_.error_kinds["other"];
      return;
    }
    ++tally_.error_kinds[kind];
  }

  void PrintError(const std::string& message) {
    if (tally_.errors_printed++ < kMaxErrorsPrinted) {
      fmt::print(stderr, "load: error {}\n", message);
    }
  }

  beast::tcp_stream stream_;
  const TargetList& targets_;
  size_t target_;
  const RequestFactory& factory_;
  Budget& budget_;
  Tally& tally_;
  std::chrono::milliseconds timeout_;
  const FailurePolicy& policy_;
  asio::steady_timer backoff_timer_;
  int64_t request_ = 0;
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

Result<tcp::resolver::results_type> Resolve(const Endpoint& e) {
  asio::io_context io;
  tcp::resolver resolver(io);
  beast::error_code ec;
  auto endpoints = resolver.resolve(e.host, std::to_string(e.port), ec);
  if (ec) return Status::InvalidArgument(fmt::format("resolve {}: {}", e.host, ec.message()));
  return endpoints;
}

// The servers to load: --targets, or the one --host/--port names.
Result<TargetList> ResolveTargets(const Options& o) {
  std::vector<Endpoint> wanted;
  if (o.targets.empty()) wanted.push_back(Endpoint{o.host, o.port});
  for (const auto& t : o.targets) {
    auto e = ParseEndpoint(t);
    if (!e.ok()) return e.status();
    wanted.push_back(*e);
  }
  TargetList out;
  for (const auto& e : wanted) {
    auto r = Resolve(e);
    if (!r.ok()) return r.status();
    out.push_back(*r);
  }
  return out;
}

// Writes "<unix_us> <target index> <key>" per acknowledged write, in time order.
// One stderr line: "load: error kinds: 16x HTTP 503; 5x read: end of stream".
void PrintErrorKinds(std::vector<std::unique_ptr<Worker>>& workers) {
  std::map<std::string, int64_t> all;
  for (auto& w : workers) {
    for (const auto& [kind, n] : w->tally.error_kinds) all[kind] += n;
  }
  std::string line;
  for (const auto& [kind, n] : all)
    line += fmt::format("{}{}x {}", line.empty() ? "" : "; ", n, kind);
  fmt::print(stderr, "load: error kinds: {}\n", line.empty() ? "none" : line);
}

Status WriteAckLog(const Options& o, std::vector<std::unique_ptr<Worker>>& workers) {
  std::vector<Ack> acks;
  for (auto& w : workers) acks.insert(acks.end(), w->tally.acks.begin(), w->tally.acks.end());
  std::sort(acks.begin(), acks.end(),
            [](const Ack& a, const Ack& b) { return a.unix_us < b.unix_us; });
  std::ofstream out(o.ack_log, std::ios::trunc);
  if (!out) return Status::IoError("cannot open --ack-log " + o.ack_log);
  for (const Ack& a : acks) {
    out << a.unix_us << ' ' << a.target << " bench/" << o.run_id << '/' << a.request << '\n';
  }
  out.flush();
  if (!out) return Status::IoError("cannot write --ack-log " + o.ack_log);
  return Status::Ok();
}

// Connects every connection, then starts the clock and the load; returns the process exit code.
int Run(const Options& o) {
  auto targets = ResolveTargets(o);
  if (!targets.ok()) {
    fmt::print(stderr, "load: {}\n", targets.status().ToString());
    return 2;
  }
  const FailurePolicy policy{o.failover, o.max_reconnects,
                             std::chrono::milliseconds(o.retry_backoff_ms), !o.ack_log.empty()};
  const RequestFactory factory(o);
  Budget budget(o.requests, SteadyClock::time_point::max());
  const int threads = std::min(o.threads, o.connections);
  std::vector<std::unique_ptr<Worker>> workers;
  for (int t = 0; t < threads; ++t) workers.push_back(std::make_unique<Worker>());
  for (int c = 0; c < o.connections; ++c) {
    Worker& w = *workers[c % threads];
    w.tally.latencies_us.reserve(
        static_cast<size_t>(std::min<int64_t>(o.requests / threads + 1, 1 << 20)));
    w.connections.push_back(
        std::make_shared<Connection>(w.io, *targets, static_cast<size_t>(c), factory, budget,
                                     w.tally, std::chrono::milliseconds(o.timeout_ms), policy));
    w.connections.back()->Connect();
  }
  RunAll(workers);
  for (auto& w : workers) {
    for (auto& c : w->connections) {
      if (!c->connected()) {
        fmt::print(stderr, "load: could not connect to {}\n",
                   o.targets.empty() ? fmt::format("{}:{}", o.host, o.port)
                                     : fmt::format("one of {} targets", o.targets.size()));
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
  if (!o.ack_log.empty()) {
    PrintErrorKinds(workers);
    if (Status s = WriteAckLog(o, workers); !s.ok()) {
      fmt::print(stderr, "load: {}\n", s.ToString());
      return 2;
    }
  }
  int64_t errors = 0;
  for (auto& w : workers) errors += w->tally.http_errors + w->tally.io_errors;
  return errors == 0 ? 0 : 1;
}

std::vector<std::string> SplitTargets(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size() && out.size() <= kMaxTargets) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    if (comma > start) out.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
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
  std::string retry_backoff = "0ms";
  std::string targets;
  CLI::App app{"Closed-loop write load against haven (Consul API) or etcd (v3 JSON gateway)."};
  app.add_option("--target", o.target_name, "haven-kv | haven-register | etcd")->required();
  app.add_option("--host", o.host, "server address");
  app.add_option("--port", o.port, "server HTTP port (required unless --targets)");
  app.add_option("--connections", o.connections, "concurrent keep-alive connections");
  app.add_option("--threads", o.threads, "event loop threads of the generator");
  app.add_option("--requests", o.requests, "stop after this many requests");
  app.add_option("--duration", duration, "stop after this long (e.g. 30s)");
  app.add_option("--value-size", o.value_size, "bytes per value");
  app.add_option("--timeout", timeout, "per-request timeout (e.g. 10s)");
  app.add_option("--run-id", o.run_id, "prefix that keeps keys unique across runs");
  app.add_option(
      "--targets", targets,
      "HOST:PORT,HOST:PORT,...: spread the connections over these servers (round robin)");
  app.add_flag("--failover", o.failover, "a failed connection reconnects to the next target");
  app.add_option("--max-reconnects", o.max_reconnects, "per connection, then it gives up");
  app.add_option("--retry-backoff", retry_backoff, "pause after a failed request (e.g. 20ms)");
  app.add_option("--ack-log", o.ack_log,
                 "write '<unix_us> <target index> <key>' per acknowledged write to this file");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto target = ParseTarget(o.target_name);
  auto duration_ms = ParseDurationFlag("--duration", duration);
  auto timeout_ms = ParseDurationFlag("--timeout", timeout);
  auto backoff_ms = ParseDurationFlag("--retry-backoff", retry_backoff);
  for (const Status* s :
       {&target.status(), &duration_ms.status(), &timeout_ms.status(), &backoff_ms.status()}) {
    if (!s->ok()) {
      fmt::print(stderr, "load: {}\n", s->message());
      return 2;
    }
  }
  o.target = *target;
  o.duration_ms = *duration_ms;
  o.timeout_ms = *timeout_ms;
  o.retry_backoff_ms = *backoff_ms;
  o.targets = SplitTargets(targets);
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
