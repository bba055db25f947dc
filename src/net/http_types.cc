#include "net/http_types.h"

namespace haven::net {
namespace {

const std::string* FindIn(const std::vector<std::pair<std::string, std::string>>& kv,
                          std::string_view name) {
  for (const auto& [k, v] : kv) {
    if (k == name) return &v;
  }
  return nullptr;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Drops "scheme://authority" from an absolute-form target so proxies' requests parse too.
bool StripAbsoluteForm(std::string_view* target) {
  size_t scheme_end = target->find("://");
  if (scheme_end == std::string_view::npos) return false;
  size_t path_start = target->find_first_of("/?", scheme_end + 3);
  if (path_start == std::string_view::npos) {
    *target = "/";
    return true;
  }
  *target = target->substr(path_start);
  return true;
}

bool ParseQuery(std::string_view raw, std::vector<std::pair<std::string, std::string>>* query) {
  while (!raw.empty()) {
    size_t amp = raw.find('&');
    std::string_view part = raw.substr(0, amp);
    raw = amp == std::string_view::npos ? std::string_view{} : raw.substr(amp + 1);
    if (part.empty()) continue;
    size_t eq = part.find('=');
    std::string key, value;
    if (!PercentDecode(part.substr(0, eq), true, &key)) return false;
    if (eq != std::string_view::npos && !PercentDecode(part.substr(eq + 1), true, &value)) {
      return false;
    }
    query->emplace_back(std::move(key), std::move(value));
  }
  return true;
}

}  // namespace

const std::string* HttpRequest::Query(std::string_view name) const { return FindIn(query, name); }

bool HttpRequest::HasQuery(std::string_view name) const { return Query(name) != nullptr; }

const std::string* HttpRequest::Header(std::string_view lowercase_name) const {
  return FindIn(headers, lowercase_name);
}

bool PercentDecode(std::string_view in, bool plus_is_space, std::string* out) {
  out->clear();
  out->reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return false;
      int hi = HexValue(in[i + 1]);
      int lo = HexValue(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out->push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out->push_back(' ');
    } else {
      out->push_back(c);
    }
  }
  return true;
}

bool ParseTarget(std::string_view target, std::string* path,
                 std::vector<std::pair<std::string, std::string>>* query) {
  path->clear();
  query->clear();
  if (target == "*") {
    *path = "*";
    return true;
  }
  if (target.empty()) return false;
  if (target.front() != '/' && !StripAbsoluteForm(&target)) return false;
  size_t hash = target.find('#');
  if (hash != std::string_view::npos) target = target.substr(0, hash);
  size_t q = target.find('?');
  std::string_view raw_path = target.substr(0, q);
  if (!PercentDecode(raw_path, false, path)) return false;
  if (path->empty()) *path = "/";
  if (q == std::string_view::npos) return true;
  return ParseQuery(target.substr(q + 1), query);
}

}  // namespace haven::net
