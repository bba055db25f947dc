// Go-style duration strings ("10s", "1m30s", "500ms"), as the Consul API writes them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/status.h"

namespace haven {

// Parses "1h2m3.5s", "250ms", "10us", "0"; a bare number is taken as seconds (Consul accepts that
// in a few places such as ?wait=60). Returns milliseconds, rounded down.
Result<int64_t> ParseDurationMs(std::string_view s);

// Formats milliseconds the way Go's time.Duration.String() does ("1m30s", "500ms", "0s").
std::string FormatDurationMs(int64_t ms);

}  // namespace haven
