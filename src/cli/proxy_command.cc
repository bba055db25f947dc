#include "cli/proxy_command.h"

#include <iostream>

#include "base/duration.h"

namespace haven::cli {

void AddProxyCommand(CLI::App& app, ProxyCommandOptions& opts) {
  proxy::ProxyOptions& p = opts.proxy;
  CLI::App* cmd = app.add_subcommand("proxy", "Run the HTTP/1.1 load-balancing failover proxy");
  cmd->add_option("--listen", p.listen, "Client address HOST:PORT (port 0: ephemeral)")
      ->capture_default_str();
  cmd->add_option("--upstream", p.upstreams, "Static upstream HOST:PORT (repeat for several)");
  cmd->add_option("--service", p.service, "Follow this service's passing instances");
  cmd->add_option("--registry", p.registry, "Registry for --service: http://HOST:PORT");
  cmd->add_option("--lb", opts.lb, "round_robin|least_request|ewma|ring_hash|random")
      ->capture_default_str();
  cmd->add_option("--hash-header", p.hash_header,
                  "ring_hash key: this request header (default: the client address)");
  cmd->add_option("--threads", p.threads, "Worker threads (0: one per core)")
      ->capture_default_str()
      ->check(CLI::Range(0, proxy::kMaxThreads));
  cmd->add_option("--admin", p.admin, "Admin address HOST:PORT for /metrics and /status");
  cmd->add_option("--per-try-timeout", opts.per_try_timeout, "Timeout of one upstream attempt")
      ->capture_default_str();
  cmd->add_option("--timeout", opts.timeout, "Overall timeout of one client request")
      ->capture_default_str();
  cmd->add_option("--max-attempts", p.retry.max_attempts, "Upstream attempts per request at most")
      ->capture_default_str()
      ->check(CLI::Range(1, 10));
  cmd->add_option("--max-pending", p.circuit.max_pending,
                  "Requests in flight per instance and worker; beyond: a fast 503")
      ->capture_default_str()
      ->check(CLI::Range(1, 1'000'000));
  cmd->add_option("--max-body", p.max_body_bytes, "Largest buffered request body in bytes")
      ->capture_default_str();
  cmd->add_option("--header-timeout", opts.header_timeout, "Time to read one client request")
      ->capture_default_str();
  cmd->add_option("--drain-timeout", opts.drain_timeout, "SIGTERM: time for in-flight requests")
      ->capture_default_str();
  cmd->add_option("--health-path", p.health_path,
                  "Active health checks (with --upstream): GET this path on every upstream");
  cmd->add_option("--health-interval", opts.health_interval,
                  "Time between health checks of one upstream (100ms..1h)")
      ->capture_default_str();
  cmd->add_option("--health-timeout", opts.health_timeout, "Timeout of one health check")
      ->capture_default_str();
  cmd->add_option("--unhealthy-threshold", p.unhealthy_threshold,
                  "Failed health checks in a row that take an upstream out")
      ->capture_default_str()
      ->check(CLI::Range(1, proxy::kMaxHealthThreshold));
  cmd->add_option("--healthy-threshold", p.healthy_threshold,
                  "Passed health checks in a row that bring an upstream back")
      ->capture_default_str()
      ->check(CLI::Range(1, proxy::kMaxHealthThreshold));
  opts.command = cmd;
}

bool ProxyCommandParsed(const ProxyCommandOptions& opts) {
  return opts.command && opts.command->parsed();
}

namespace {

// Parses a duration flag into *out_ms; prints the error and returns false on bad input.
bool ParseDurationFlag(const char* flag, const std::string& text, int64_t* out_ms) {
  auto ms = ParseDurationMs(text);
  if (!ms.ok() || *ms <= 0) {
    std::cerr << "haven proxy: " << flag << ": bad duration \"" << text << "\"\n";
    return false;
  }
  *out_ms = *ms;
  return true;
}

}  // namespace

int RunProxyCommand(ProxyCommandOptions& opts) {
  proxy::ProxyOptions& p = opts.proxy;
  auto policy = lb::ParsePolicy(opts.lb);
  if (!policy.ok()) {
    std::cerr << "haven proxy: --lb: " << policy.status().message() << "\n";
    return 2;
  }
  p.policy = *policy;
  if (!ParseDurationFlag("--per-try-timeout", opts.per_try_timeout, &p.retry.per_try_timeout_ms) ||
      !ParseDurationFlag("--timeout", opts.timeout, &p.retry.overall_timeout_ms) ||
      !ParseDurationFlag("--header-timeout", opts.header_timeout, &p.header_timeout_ms) ||
      !ParseDurationFlag("--drain-timeout", opts.drain_timeout, &p.drain_timeout_ms) ||
      !ParseDurationFlag("--health-interval", opts.health_interval, &p.health_interval_ms) ||
      !ParseDurationFlag("--health-timeout", opts.health_timeout, &p.health_timeout_ms)) {
    return 2;
  }
  if (Status s = proxy::ValidateProxyOptions(p); !s.ok()) {
    std::cerr << "haven proxy: " << s.message() << "\n";
    return 2;
  }
  return proxy::RunProxy(p);
}

}  // namespace haven::cli
