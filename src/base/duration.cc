#include "base/duration.h"

#include <cmath>
#include <cstdlib>

namespace haven {

Result<int64_t> ParseDurationMs(std::string_view s) {
  if (s.empty()) return Status::InvalidArgument("empty duration");
  std::string str(s);
  const char* p = str.c_str();
  bool neg = false;
  if (*p == '-' || *p == '+') {
    neg = *p == '-';
    ++p;
  }
  if (std::string_view(p) == "0") return int64_t{0};
  double total_ms = 0;
  bool any = false;
  while (*p) {
    char* end = nullptr;
    double v = std::strtod(p, &end);
    if (end == p) return Status::InvalidArgument("invalid duration \"" + str + "\"");
    p = end;
    std::string unit;
    while (*p && ((*p >= 'a' && *p <= 'z') || *p == '\xc2' || *p == '\xb5')) unit += *p++;
    double mult = 0;
    if (unit.empty()) {
      if (any || *p) return Status::InvalidArgument("missing unit in duration \"" + str + "\"");
      mult = 1000;  // bare number: seconds
    } else if (unit == "ns") {
      mult = 1e-6;
    } else if (unit == "us" || unit == "\xc2\xb5s" || unit == "\xb5s") {
      mult = 1e-3;
    } else if (unit == "ms") {
      mult = 1;
    } else if (unit == "s") {
      mult = 1000;
    } else if (unit == "m") {
      mult = 60'000;
    } else if (unit == "h") {
      mult = 3'600'000;
    } else {
      return Status::InvalidArgument("unknown unit \"" + unit + "\" in duration \"" + str + "\"");
    }
    total_ms += v * mult;
    any = true;
  }
  if (!any || !std::isfinite(total_ms) || total_ms > 9.2e15) {
    return Status::InvalidArgument("invalid duration \"" + str + "\"");
  }
  auto ms = static_cast<int64_t>(total_ms);
  return neg ? -ms : ms;
}

std::string FormatDurationMs(int64_t ms) {
  if (ms == 0) return "0s";
  std::string out;
  if (ms < 0) {
    out = "-";
    ms = -ms;
  }
  if (ms < 1000) return out + std::to_string(ms) + "ms";
  int64_t h = ms / 3'600'000;
  int64_t m = (ms / 60'000) % 60;
  int64_t s = (ms / 1000) % 60;
  int64_t frac = ms % 1000;
  if (h) out += std::to_string(h) + "h";
  if (h || m) out += std::to_string(m) + "m";
  out += std::to_string(s);
  if (frac) {
    std::string f = std::to_string(frac);
    f = std::string(3 - f.size(), '0') + f;
    while (!f.empty() && f.back() == '0') f.pop_back();
    out += "." + f;
  }
  return out + "s";
}

}  // namespace haven
