#include "cli/proxy_command.h"

#include <iostream>

#include "proxy/config_file.h"
#include "proxy/proxy.h"

namespace haven::cli {
namespace {

using proxy::SettingScope;

// The route settings that make sense for the one catch-all route the flags describe.
bool IsRouteFlag(std::string_view name) { return name == "retry-non-idempotent"; }
// The cluster's name comes from --service (or "static"), not from a flag.
bool IsClusterFlag(std::string_view name) { return name != "name"; }

std::string_view GroupOf(SettingScope scope) {
  switch (scope) {
    case SettingScope::kProxy:
      return "Proxy (also with --config)";
    case SettingScope::kListener:
    case SettingScope::kRoute:
      return "Listener (without --config)";
    case SettingScope::kCluster:
      break;
  }
  return "Cluster (without --config)";
}

void AddFlag(CLI::App* cmd, ProxyCommandOptions& opts, SettingScope scope,
             const proxy::SettingInfo& info) {
  ProxyFlag& flag = opts.flags.emplace_back();
  flag.scope = scope;
  flag.name = std::string(info.name);
  std::string name = "--" + flag.name;
  std::string help(info.help);
  if (info.repeatable) {
    flag.option = cmd->add_option(name, flag.values, help);
  } else if (info.name == "retry-non-idempotent") {
    // A switch: bare means true, and --retry-non-idempotent=false still parses.
    flag.option = cmd->add_flag(name, flag.value, help);
  } else {
    flag.option = cmd->add_option(name, flag.value, help);
  }
  flag.option->default_str(proxy::DefaultSettingText(scope, info.name));
  flag.option->type_name(std::string(info.kind));
  flag.option->group(std::string(GroupOf(scope)));
}

bool Given(const ProxyFlag& flag) { return flag.option != nullptr && flag.option->count() > 0; }

// Applies every given flag of `scope` to `target` through `set`.
template <typename T, typename Setter>
Status ApplyFlags(const ProxyCommandOptions& opts, SettingScope scope, T* target, Setter set) {
  for (const ProxyFlag& flag : opts.flags) {
    if (flag.scope != scope || !Given(flag)) continue;
    std::vector<std::string> values = flag.values;
    if (values.empty()) values.push_back(flag.value);
    for (const std::string& v : values) {
      if (Status s = set(target, flag.name, v); !s.ok()) {
        return Status::InvalidArgument("--" + s.message());
      }
    }
  }
  return Status::Ok();
}

// The listener and cluster flags, which --config replaces.
std::vector<std::string> GivenListenerAndClusterFlags(const ProxyCommandOptions& opts) {
  std::vector<std::string> out;
  for (const ProxyFlag& flag : opts.flags) {
    if (flag.scope != SettingScope::kProxy && Given(flag)) out.push_back("--" + flag.name);
  }
  return out;
}

Result<proxy::ProxyOptions> FromConfigFile(const ProxyCommandOptions& opts) {
  if (auto given = GivenListenerAndClusterFlags(opts); !given.empty()) {
    return Status::InvalidArgument("give either --config or the listener flags (" + given[0] +
                                   " given with --config)");
  }
  auto loaded = proxy::LoadProxyConfig(opts.config);
  if (!loaded.ok()) return loaded.status();
  proxy::ProxyOptions p = std::move(loaded).value();
  if (Status s = ApplyFlags(opts, SettingScope::kProxy, &p, proxy::SetProxySetting); !s.ok()) {
    return s;
  }
  return p;
}

Result<proxy::ProxyOptions> FromFlags(const ProxyCommandOptions& opts) {
  proxy::ProxyOptions p;
  proxy::ClusterOptions cluster;
  proxy::ListenerOptions listener;
  proxy::RouteOptions route;
  Status s = ApplyFlags(opts, SettingScope::kProxy, &p, proxy::SetProxySetting);
  if (s.ok()) s = ApplyFlags(opts, SettingScope::kCluster, &cluster, proxy::SetClusterSetting);
  if (s.ok()) s = ApplyFlags(opts, SettingScope::kListener, &listener, proxy::SetListenerSetting);
  if (s.ok()) s = ApplyFlags(opts, SettingScope::kRoute, &route, proxy::SetRouteSetting);
  if (!s.ok()) return s;
  cluster.name = cluster.service.empty() ? "static" : cluster.service;
  route.cluster = cluster.name;
  listener.routes.push_back(std::move(route));
  p.clusters.push_back(std::move(cluster));
  p.listeners.push_back(std::move(listener));
  return p;
}

}  // namespace

void AddProxyCommand(CLI::App& app, ProxyCommandOptions& opts) {
  CLI::App* cmd =
      app.add_subcommand("proxy", "Run the HTTP/1.1 and TCP load-balancing failover proxy");
  cmd->add_option("--config", opts.config,
                  "YAML file of listeners, routes and clusters (see docs/proxy.md)");
  for (const auto& info : proxy::SettingsOf(SettingScope::kProxy)) {
    AddFlag(cmd, opts, SettingScope::kProxy, info);
  }
  for (const auto& info : proxy::SettingsOf(SettingScope::kListener)) {
    AddFlag(cmd, opts, SettingScope::kListener, info);
  }
  for (const auto& info : proxy::SettingsOf(SettingScope::kRoute)) {
    if (IsRouteFlag(info.name)) AddFlag(cmd, opts, SettingScope::kRoute, info);
  }
  for (const auto& info : proxy::SettingsOf(SettingScope::kCluster)) {
    if (IsClusterFlag(info.name)) AddFlag(cmd, opts, SettingScope::kCluster, info);
  }
  opts.command = cmd;
}

bool ProxyCommandParsed(const ProxyCommandOptions& opts) {
  return opts.command && opts.command->parsed();
}

Result<proxy::ProxyOptions> BuildProxyOptions(const ProxyCommandOptions& opts) {
  auto built = opts.config.empty() ? FromFlags(opts) : FromConfigFile(opts);
  if (!built.ok()) return built;
  if (Status s = proxy::ValidateProxyOptions(*built); !s.ok()) return s;
  return built;
}

int RunProxyCommand(ProxyCommandOptions& opts) {
  auto built = BuildProxyOptions(opts);
  if (!built.ok()) {
    std::cerr << "haven proxy: " << built.status().message() << "\n";
    return 2;
  }
  return proxy::RunProxy(*built);
}

}  // namespace haven::cli
