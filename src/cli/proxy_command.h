// The `haven proxy` subcommand: flags into proxy::ProxyOptions, then runs the proxy until SIGTERM.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "proxy/proxy.h"

namespace haven::cli {

// Flag values as typed; RunProxyCommand turns them into proxy::ProxyOptions.
struct ProxyCommandOptions {
  proxy::ProxyOptions proxy;
  std::string lb = "least_request";
  std::string per_try_timeout = "5s";
  std::string timeout = "15s";
  std::string header_timeout = "10s";
  std::string drain_timeout = "10s";
  std::string health_interval = "1s";
  std::string health_timeout = "1s";
  CLI::App* command = nullptr;  // set by AddProxyCommand
};

// Adds `proxy` (flags: --listen --upstream --service --registry --lb --threads --admin
// --per-try-timeout --timeout --max-attempts --max-pending --max-body --header-timeout
// --drain-timeout --health-path --health-interval --health-timeout --unhealthy-threshold
// --healthy-threshold) to `app`.
void AddProxyCommand(CLI::App& app, ProxyCommandOptions& opts);
// True when `haven proxy` was the subcommand given.
bool ProxyCommandParsed(const ProxyCommandOptions& opts);
// Validates the flags and runs the proxy until SIGTERM/SIGINT; returns the exit code.
int RunProxyCommand(ProxyCommandOptions& opts);

}  // namespace haven::cli
