#include "proxy/router.h"

#include <algorithm>
#include <cctype>

namespace haven::proxy {

namespace {

// Strips ":port" unless the colon belongs to an IPv6 literal.
std::string_view WithoutPort(std::string_view host) {
  if (!host.empty() && host.front() == '[') {
    size_t close = host.find(']');
    return close == std::string_view::npos ? host : host.substr(0, close + 1);
  }
  size_t colon = host.rfind(':');
  return colon == std::string_view::npos ? host : host.substr(0, colon);
}

bool EqualsLowercase(std::string_view text, std::string_view lower) {
  if (text.size() != lower.size()) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(text[i])) != lower[i]) return false;
  }
  return true;
}

// Splits an absolute-form target ("http://host:80/p?q") into its authority and path.
void SplitAbsoluteForm(std::string_view& host, std::string_view& target) {
  size_t scheme_end = target.find("://");
  if (scheme_end == std::string_view::npos || target.empty() || target.front() == '/') return;
  std::string_view rest = target.substr(scheme_end + 3);
  size_t slash = rest.find('/');
  host = rest.substr(0, slash);
  target = slash == std::string_view::npos ? std::string_view("/") : rest.substr(slash);
}

}  // namespace

std::string Router::NormalizeHost(std::string_view host) {
  std::string out(WithoutPort(host));
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

Router::Router(const std::vector<RouteOptions>& routes) {
  entries_.reserve(routes.size());
  for (const RouteOptions& r : routes) {
    entries_.push_back({NormalizeHost(r.host), r.path_prefix.empty() ? "/" : r.path_prefix});
  }
}

std::optional<size_t> Router::Match(std::string_view host, std::string_view target) const {
  SplitAbsoluteForm(host, target);
  std::string_view bare_host = WithoutPort(host);
  for (size_t i = 0; i < entries_.size(); ++i) {
    const Entry& e = entries_[i];
    if (!e.host.empty() && !EqualsLowercase(bare_host, e.host)) continue;
    if (target.substr(0, e.path_prefix.size()) != e.path_prefix) continue;
    return i;
  }
  return std::nullopt;
}

}  // namespace haven::proxy
