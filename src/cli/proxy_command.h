// The `haven proxy` subcommand: flags (or --config FILE) into proxy::ProxyOptions through the one
// settings table (proxy/proxy_settings.h), then runs the proxy until SIGTERM.
#pragma once

#include <deque>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "proxy/proxy_options.h"
#include "proxy/proxy_settings.h"

namespace haven::cli {

// One flag of the settings table, with its values as typed on the command line.
struct ProxyFlag {
  proxy::SettingScope scope;
  std::string name;                 // the setting name, also the flag name without "--"
  std::vector<std::string> values;  // upstream: every occurrence; others: the one value
  std::string value;
  CLI::Option* option = nullptr;
};

// What AddProxyCommand registers; RunProxyCommand turns the given flags into proxy::ProxyOptions.
struct ProxyCommandOptions {
  std::string config;  // --config FILE: listeners, routes and clusters from a YAML file
  // One entry per setting; a deque so that CLI11 can keep pointers into it.
  std::deque<ProxyFlag> flags;
  CLI::App* command = nullptr;  // set by AddProxyCommand
};

// Adds `proxy` to `app`: --config, the proxy-level flags (--threads --admin --max-body
// --header-timeout ... --watch-wait), one listener (--listen --mode --retry-non-idempotent) and
// one cluster (--upstream or --service/--registry, --lb, --per-try-timeout, --health-path, ...).
void AddProxyCommand(CLI::App& app, ProxyCommandOptions& opts);
// True when `haven proxy` was the subcommand given.
bool ProxyCommandParsed(const ProxyCommandOptions& opts);
// The options the command line describes: --config's file with the proxy-level flags on top, or
// one listener with one catch-all route to one cluster ("static" or named after --service).
// Validated; the message says what is wrong.
Result<proxy::ProxyOptions> BuildProxyOptions(const ProxyCommandOptions& opts);
// Builds the options and runs the proxy until SIGTERM/SIGINT; returns the exit code (2 on bad
// flags or config).
int RunProxyCommand(ProxyCommandOptions& opts);

}  // namespace haven::cli
