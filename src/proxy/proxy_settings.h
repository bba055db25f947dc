// The one table from setting names ("per-try-timeout") to ProxyOptions fields, shared by the
// command-line flags and the config file so that both mean the same thing.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "proxy/proxy_options.h"

namespace haven::proxy {

// Which struct a setting belongs to.
enum class SettingScope { kProxy, kCluster, kListener, kRoute };

// One row of the table, for --help, docs and "unknown setting" messages.
struct SettingInfo {
  std::string_view name;    // the flag name without "--"
  std::string_view help;    // one line: what it sets and its range
  bool repeatable = false;  // each call appends (upstream)
  // The value's type for --help: DURATION, INT, SIZE, FRACTION, BOOL, POLICY, MODE, HOST:PORT,
  // TEXT.
  std::string_view kind = "TEXT";
};

// Values are parsed as typed on a command line: durations Go-style ("250ms", "5s"), integers,
// true/false, sizes in bytes (a KiB/MiB/GiB suffix allowed), lb policy names, http|tcp.
// An unknown key or a bad value is InvalidArgument naming the key.
Status SetProxySetting(ProxyOptions* opts, std::string_view key, std::string_view value);
Status SetClusterSetting(ClusterOptions* cluster, std::string_view key, std::string_view value);
Status SetListenerSetting(ListenerOptions* listener, std::string_view key, std::string_view value);
Status SetRouteSetting(RouteOptions* route, std::string_view key, std::string_view value);

// The settings of one scope, in table order.
const std::vector<SettingInfo>& SettingsOf(SettingScope scope);
// "threads, admin, max-body, ..." for error messages.
std::string SettingNames(SettingScope scope);
// True when `key` is a setting of `scope`.
bool IsSetting(SettingScope scope, std::string_view key);
// The value of `key` in a default-constructed struct of `scope`, formatted as it would be typed
// ("5s", "least_request", "8MiB"); "" when there is no default (or the key is unknown).
std::string DefaultSettingText(SettingScope scope, std::string_view key);
// "proxy", "cluster", "listener", "route": for messages.
std::string_view ScopeName(SettingScope scope);

}  // namespace haven::proxy
