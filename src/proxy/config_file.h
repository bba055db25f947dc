// The `haven proxy --config FILE` loader: a YAML file of listeners, routes and clusters whose
// keys are the same settings as the flags (proxy_settings.h), validated before it is returned.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "base/status.h"
#include "proxy/proxy_options.h"

namespace haven::proxy {

inline constexpr size_t kMaxConfigFileBytes = size_t{1} << 20;

// Reads and parses `path`. Errors carry "path:line: ...": a missing or unreadable file, one over
// kMaxConfigFileBytes, YAML syntax, unknown keys, a wrong node type, a bad value, or options that
// fail ValidateProxyOptions.
Result<ProxyOptions> LoadProxyConfig(const std::string& path);

// Parses YAML text (messages carry "line N: ..."), then validates it.
Result<ProxyOptions> ParseProxyConfig(std::string_view yaml_text);

}  // namespace haven::proxy
