#include "node/consul_json.h"

#include <algorithm>
#include <cstdint>
#include <exception>
#include <functional>
#include <initializer_list>
#include <optional>

#include <boost/json.hpp>

#include "base/base64.h"
#include "base/duration.h"
#include "registry/state_machine.h"

namespace haven::node::consul {
namespace {

namespace json = boost::json;
using Names = std::initializer_list<std::string_view>;

// Limits on what one request may carry (Consul's own meta limits; the rest keep a body bounded).
constexpr size_t kMaxBodyBytes = 1 << 20;
constexpr size_t kMaxJsonDepth = 32;
constexpr size_t kMaxStringBytes = 4096;
constexpr size_t kMaxTags = 64;
constexpr size_t kMaxMetaPairs = 64;
constexpr size_t kMaxMetaKeyBytes = 128;
constexpr size_t kMaxMetaValueBytes = 512;
constexpr size_t kMaxChecks = 32;
constexpr size_t kMaxHeaders = 32;
constexpr size_t kMaxCheckOutputBytes = 4096;  // Consul's default check_output_max_size
constexpr int64_t kMaxCheckDurationMs = int64_t{30} * 24 * 3600 * 1000;
constexpr int64_t kDefaultCheckTimeoutMs = 10'000;
constexpr int32_t kMaxThreshold = 1000;
constexpr int64_t kMinSessionTtlMs = 1'000;
constexpr int64_t kMaxSessionTtlMs = 86'400'000;
constexpr int64_t kDefaultLockDelayMs = 15'000;
constexpr int64_t kMaxLockDelayMs = 60'000;
constexpr double kLockDelaySecondsBelow = 1000;  // Consul: a bare number below this is seconds
constexpr std::string_view kDatacenter = "dc1";

#define HAVEN_TRY(expr)           \
  do {                            \
    ::haven::Status _st = (expr); \
    if (!_st.ok()) return _st;    \
  } while (0)

Status Invalid(std::string m) { return Status::InvalidArgument(std::move(m)); }

Status DecodeError(const std::string& label, const std::string& what) {
  return Invalid("Request decode failed: " + label + ": " + what);
}

const char* KindName(const json::value& v) {
  switch (v.kind()) {
    case json::kind::null:
      return "null";
    case json::kind::bool_:
      return "bool";
    case json::kind::int64:
    case json::kind::uint64:
    case json::kind::double_:
      return "number";
    case json::kind::string:
      return "string";
    case json::kind::array:
      return "array";
    case json::kind::object:
      return "object";
  }
  return "value";
}

Status WrongType(const std::string& label, std::string_view want, const json::value& got) {
  return DecodeError(label, "expected " + std::string(want) + ", got " + KindName(got));
}

bool EqualFold(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; };
    return lower(x) == lower(y);
  });
}

// Go's encoding/json: an exact key wins, else the first case-insensitive match. JSON null counts
// as absent, as it leaves a Go field untouched.
const json::value* Find(const json::object& o, Names names) {
  for (auto name : names) {
    if (auto* v = o.if_contains(name); v && !v->is_null()) return v;
  }
  for (auto name : names) {
    for (const auto& kv : o) {
      if (!kv.value().is_null() && EqualFold(kv.key(), name)) return &kv.value();
    }
  }
  return nullptr;
}

// Typed reads of one object's fields; labels in messages carry the path ("Checks[1].TTL").
class Reader {
 public:
  Reader(const json::object& o, std::string prefix) : o_(o), prefix_(std::move(prefix)) {}

  const json::value* Has(Names names) const { return Find(o_, names); }
  std::string Label(Names names) const { return prefix_ + std::string(*names.begin()); }

  Status String(Names names, std::string* out) const {
    const json::value* v = Has(names);
    if (!v) return Status::Ok();
    if (!v->is_string()) return WrongType(Label(names), "string", *v);
    if (v->get_string().size() > kMaxStringBytes) {
      return Invalid(Label(names) + " is longer than " + std::to_string(kMaxStringBytes) +
                     " bytes");
    }
    *out = std::string(v->get_string());
    return Status::Ok();
  }

  Status Int(Names names, int64_t min, int64_t max, int64_t* out) const {
    const json::value* v = Has(names);
    if (!v) return Status::Ok();
    std::optional<int64_t> n = AsInt(*v);
    if (!n) {
      if (v->is_number()) return DecodeError(Label(names), "expected an integer");
      return WrongType(Label(names), "number", *v);
    }
    if (*n < min || *n > max) {
      return Invalid("Invalid " + Label(names) + ": must be between " + std::to_string(min) +
                     " and " + std::to_string(max));
    }
    *out = *n;
    return Status::Ok();
  }

  Status Int32(Names names, int32_t min, int32_t max, int32_t* out) const {
    int64_t n = *out;
    HAVEN_TRY(Int(names, min, max, &n));
    *out = static_cast<int32_t>(n);
    return Status::Ok();
  }

  Status Bool(Names names, bool* out) const {
    const json::value* v = Has(names);
    if (!v) return Status::Ok();
    if (!v->is_bool()) return WrongType(Label(names), "bool", *v);
    *out = v->get_bool();
    return Status::Ok();
  }

  // A Go duration string, or a number of nanoseconds (time.Duration's JSON form).
  Status DurationMs(Names names, std::optional<int64_t>* out) const {
    const json::value* v = Has(names);
    if (!v) return Status::Ok();
    if (v->is_string()) {
      if (v->get_string().empty()) return Status::Ok();
      auto ms = ParseDurationMs(v->get_string());
      if (!ms.ok()) return DecodeError(Label(names), ms.status().message());
      *out = *ms;
      return Status::Ok();
    }
    if (v->is_number()) {
      double ns = v->to_number<double>();
      if (ns > 9.2e18 || ns < -9.2e18) return DecodeError(Label(names), "duration out of range");
      *out = static_cast<int64_t>(ns / 1e6);
      return Status::Ok();
    }
    return WrongType(Label(names), "duration string", *v);
  }

  Status StringList(Names names, size_t max, google::protobuf::RepeatedPtrField<std::string>* out,
                    bool* present = nullptr) const {
    const json::value* v = Has(names);
    if (present) *present = v != nullptr;
    if (!v) return Status::Ok();
    if (!v->is_array()) return WrongType(Label(names), "array", *v);
    const json::array& a = v->get_array();
    if (a.size() > max) {
      return Invalid("Too many " + Label(names) + ": " + std::to_string(a.size()) + " (limit " +
                     std::to_string(max) + ")");
    }
    out->Clear();
    for (size_t i = 0; i < a.size(); ++i) {
      std::string item_label = Label(names) + "[" + std::to_string(i) + "]";
      if (!a[i].is_string()) return WrongType(item_label, "string", a[i]);
      if (a[i].get_string().size() > kMaxStringBytes) {
        return Invalid(item_label + " is longer than " + std::to_string(kMaxStringBytes) +
                       " bytes");
      }
      out->Add(std::string(a[i].get_string()));
    }
    return Status::Ok();
  }

  // Consul's meta rules: at most 64 pairs, keys of [A-Za-z0-9_-] up to 128 bytes, values up to 512.
  Status Meta(Names names, google::protobuf::Map<std::string, std::string>* out) const {
    const json::value* v = Has(names);
    if (!v) return Status::Ok();
    if (!v->is_object()) return WrongType(Label(names), "object", *v);
    const json::object& o = v->get_object();
    std::string what = "Invalid " + Label(names) + ": ";
    if (o.size() > kMaxMetaPairs) {
      return Invalid(what + "too many pairs (limit " + std::to_string(kMaxMetaPairs) + ")");
    }
    out->clear();
    for (const auto& kv : o) {
      std::string key(kv.key());
      if (key.empty()) return Invalid(what + "empty key");
      if (key.size() > kMaxMetaKeyBytes) {
        return Invalid(what + "key is too long (limit: " + std::to_string(kMaxMetaKeyBytes) +
                       " characters)");
      }
      if (!std::all_of(key.begin(), key.end(), IsMetaKeyChar)) {
        return Invalid(what + "key '" + key + "' contains invalid characters");
      }
      if (!kv.value().is_string()) return WrongType(Label(names) + "." + key, "string", kv.value());
      if (kv.value().get_string().size() > kMaxMetaValueBytes) {
        return Invalid(what + "value for key '" + key + "' is too long (limit: " +
                       std::to_string(kMaxMetaValueBytes) + " characters)");
      }
      (*out)[key] = std::string(kv.value().get_string());
    }
    return Status::Ok();
  }

  // A plain string map (TaggedAddresses): bounded, but keys are free-form.
  Status StringMap(Names names, google::protobuf::Map<std::string, std::string>* out) const {
    const json::value* v = Has(names);
    if (!v) return Status::Ok();
    if (!v->is_object()) return WrongType(Label(names), "object", *v);
    const json::object& o = v->get_object();
    if (o.size() > kMaxMetaPairs) return Invalid("Too many " + Label(names));
    for (const auto& kv : o) {
      std::string label = Label(names) + "." + std::string(kv.key());
      if (!kv.value().is_string()) return WrongType(label, "string", kv.value());
      if (kv.key().size() > kMaxStringBytes || kv.value().get_string().size() > kMaxStringBytes) {
        return Invalid(label + " is too long");
      }
      (*out)[std::string(kv.key())] = std::string(kv.value().get_string());
    }
    return Status::Ok();
  }

  // Go's map[string][]string; we keep the first value of each header.
  Status Headers(Names names, google::protobuf::Map<std::string, std::string>* out) const {
    const json::value* v = Has(names);
    if (!v) return Status::Ok();
    if (!v->is_object()) return WrongType(Label(names), "object", *v);
    const json::object& o = v->get_object();
    if (o.size() > kMaxHeaders) {
      return Invalid("Invalid check: too many headers (limit " + std::to_string(kMaxHeaders) + ")");
    }
    for (const auto& kv : o) {
      std::string label = Label(names) + "." + std::string(kv.key());
      if (!kv.value().is_array()) return WrongType(label, "array", kv.value());
      const json::array& vals = kv.value().get_array();
      if (vals.empty()) continue;
      if (!vals[0].is_string()) return WrongType(label + "[0]", "string", vals[0]);
      if (kv.key().size() > kMaxStringBytes || vals[0].get_string().size() > kMaxStringBytes) {
        return Invalid(label + " is too long");
      }
      (*out)[std::string(kv.key())] = std::string(vals[0].get_string());
    }
    return Status::Ok();
  }

  // nullptr when absent; an error when present but not an object.
  Result<const json::object*> Object(Names names) const {
    const json::value* v = Has(names);
    if (!v) return static_cast<const json::object*>(nullptr);
    if (!v->is_object()) return WrongType(Label(names), "object", *v);
    return &v->get_object();
  }

  const std::string& prefix() const { return prefix_; }

 private:
  static bool IsMetaKeyChar(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  }

  static std::optional<int64_t> AsInt(const json::value& v) {
    if (v.is_int64()) return v.get_int64();
    if (v.is_uint64()) {
      if (v.get_uint64() > uint64_t(INT64_MAX)) return INT64_MAX;
      return static_cast<int64_t>(v.get_uint64());
    }
    if (v.is_double()) {
      double d = v.get_double();
      if (d != static_cast<double>(static_cast<int64_t>(d)) || d > 9.2e18 || d < -9.2e18) {
        return std::nullopt;
      }
      return static_cast<int64_t>(d);
    }
    return std::nullopt;
  }

  const json::object& o_;
  std::string prefix_;
};

// ---- body parsing ----

bool IsBlank(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
}

Result<json::object> ParseObject(std::string_view body, bool allow_empty) {
  if (body.size() > kMaxBodyBytes) {
    return Status::TooLarge("Request body larger than " + std::to_string(kMaxBodyBytes) + " bytes");
  }
  if (IsBlank(body)) {
    if (allow_empty) return json::object{};
    return Invalid("Request decode failed: empty body");
  }
  json::parse_options opts;
  opts.max_depth = kMaxJsonDepth;
  json::stream_parser parser(json::storage_ptr(), opts);
  boost::system::error_code ec;
  size_t consumed = parser.write(body.data(), body.size(), ec);
  if (!ec) {
    parser.finish(ec);
    consumed = body.size();
  }
  if (ec) {
    return Invalid("Request decode failed: invalid JSON at offset " + std::to_string(consumed) +
                   " (" + ec.message() + ")");
  }
  json::value v = parser.release();
  if (!v.is_object()) {
    return Invalid(std::string("Request decode failed: expected a JSON object, got ") +
                   KindName(v));
  }
  return std::move(v.get_object());
}

// Exceptions (bad_alloc, a Boost.JSON surprise) must not leave this layer.
template <typename T>
Result<T> Guarded(const std::function<Result<T>()>& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return Status::Internal(std::string("JSON mapping failed: ") + e.what());
  }
}

bool IsValidStatus(std::string_view s) {
  return s == "passing" || s == "warning" || s == "critical";
}

// ---- services ----

// `name_key` is "Name" for the agent endpoint, "Service" inside a catalog registration.
Status ReadService(const Reader& r, std::string_view name_key, pb::Service* s) {
  std::string name, id, address;
  HAVEN_TRY(r.String({name_key}, &name));
  HAVEN_TRY(r.String({"ID"}, &id));
  HAVEN_TRY(r.String({"Address"}, &address));
  if (name.empty()) return Invalid("Missing service name");
  s->set_name(name);
  s->set_id(id.empty() ? name : id);
  s->set_address(address);
  HAVEN_TRY(r.StringList({"Tags"}, kMaxTags, s->mutable_tags()));
  int32_t port = 0;
  HAVEN_TRY(r.Int32({"Port"}, 0, 65535, &port));
  s->set_port(port);
  HAVEN_TRY(r.Meta({"Meta"}, s->mutable_meta()));
  bool eto = false;
  HAVEN_TRY(r.Bool({"EnableTagOverride"}, &eto));
  s->set_enable_tag_override(eto);
  int32_t passing = 1, warning = 1;
  auto weights = r.Object({"Weights"});
  if (!weights.ok()) return weights.status();
  if (*weights) {
    Reader w(**weights, r.prefix() + "Weights.");
    HAVEN_TRY(w.Int32({"Passing"}, INT32_MIN, INT32_MAX, &passing));
    HAVEN_TRY(w.Int32({"Warning"}, 0, INT32_MAX, &warning));
    if (passing < 1) return Invalid("Invalid Weights: Passing must be greater than 0");
  }
  s->set_weight_passing(passing);
  s->set_weight_warning(warning);
  return Status::Ok();
}

// ---- checks ----

constexpr std::string_view kUnsupportedKinds[] = {
    "Args",      "ScriptArgs",   "Script",    "GRPC", "DockerContainerID", "H2PING", "UDP",
    "OSService", "AliasService", "AliasNode", "Shell"};

bool IsEmptyValue(const json::value& v) {
  return (v.is_string() && v.get_string().empty()) || (v.is_array() && v.get_array().empty()) ||
         (v.is_bool() && !v.get_bool());
}

Status RejectUnsupportedKinds(const Reader& r) {
  for (auto kind : kUnsupportedKinds) {
    const json::value* v = r.Has({kind});
    if (v && !IsEmptyValue(*v)) {
      return Invalid("Invalid check: " + std::string(kind) +
                     " checks are not supported (haven runs TTL, HTTP and TCP checks)");
    }
  }
  return Status::Ok();
}

Status CheckDuration(std::string_view what, int64_t ms, bool positive) {
  if (positive ? ms <= 0 : ms < 0) {
    return Invalid("Invalid check: " + std::string(what) +
                   (positive ? " must be > 0" : " must be >= 0"));
  }
  if (ms > kMaxCheckDurationMs) {
    return Invalid("Invalid check: " + std::string(what) + " must be at most " +
                   FormatDurationMs(kMaxCheckDurationMs));
  }
  return Status::Ok();
}

// What a definition object says; fields absent from it stay unset so a nested catalog
// "Definition" can fill what the top level left out.
struct DefinitionFields {
  std::optional<int64_t> ttl, interval, timeout, deregister_after;
  std::string http, tcp, method;
  bool ttl_present = false;
};

Status ReadDefinition(const Reader& r, DefinitionFields* f, pb::CheckDefinition* d) {
  HAVEN_TRY(RejectUnsupportedKinds(r));
  if (r.Has({"TTL"})) f->ttl_present = true;
  HAVEN_TRY(r.DurationMs({"TTL"}, &f->ttl));
  HAVEN_TRY(r.String({"HTTP"}, &f->http));
  HAVEN_TRY(r.String({"TCP"}, &f->tcp));
  HAVEN_TRY(r.String({"Method"}, &f->method));
  HAVEN_TRY(r.DurationMs({"Interval"}, &f->interval));
  HAVEN_TRY(r.DurationMs({"Timeout"}, &f->timeout));
  HAVEN_TRY(r.DurationMs({"DeregisterCriticalServiceAfter", "deregister_critical_service_after"},
                         &f->deregister_after));
  HAVEN_TRY(r.Headers({"Header"}, d->mutable_header()));
  bool skip = d->tls_skip_verify();
  HAVEN_TRY(r.Bool({"TLSSkipVerify", "tls_skip_verify"}, &skip));
  d->set_tls_skip_verify(skip);
  int32_t success = d->success_before_passing(), failures = d->failures_before_critical();
  HAVEN_TRY(
      r.Int32({"SuccessBeforePassing", "success_before_passing"}, 0, kMaxThreshold, &success));
  HAVEN_TRY(
      r.Int32({"FailuresBeforeCritical", "failures_before_critical"}, 0, kMaxThreshold, &failures));
  d->set_success_before_passing(success);
  d->set_failures_before_critical(failures);
  return Status::Ok();
}

bool IsHttpUrl(std::string_view u) {
  return (u.starts_with("http://") && u.size() > 7) || (u.starts_with("https://") && u.size() > 8);
}

bool IsValidMethod(std::string_view m) {
  return m.size() <= 16 &&
         std::all_of(m.begin(), m.end(), [](char c) { return c >= 'A' && c <= 'Z'; });
}

// Checks that the kind is one we run and that its timing makes sense, then fills `d`.
Status ApplyDefinition(const DefinitionFields& f, bool require_kind, pb::CheckDefinition* d) {
  int kinds = int(f.ttl_present) + int(!f.http.empty()) + int(!f.tcp.empty());
  if (kinds > 1) return Invalid("Invalid check: exactly one of TTL, HTTP or TCP may be set");
  if (kinds == 0 && require_kind) {
    return Invalid("Invalid check: one of TTL, HTTP or TCP must be set");
  }
  if (f.ttl_present) {
    HAVEN_TRY(CheckDuration("TTL", f.ttl.value_or(0), true));
    d->set_ttl_ms(*f.ttl);
  }
  if (!f.http.empty() && !IsHttpUrl(f.http)) {
    return Invalid("Invalid check: HTTP must be an http:// or https:// URL");
  }
  if (!f.tcp.empty() && f.tcp.find(':') == std::string::npos) {
    return Invalid("Invalid check: TCP must be host:port");
  }
  if (!f.method.empty() && !IsValidMethod(f.method)) {
    return Invalid("Invalid check: invalid HTTP method '" + f.method + "'");
  }
  d->set_http(f.http);
  d->set_tcp(f.tcp);
  d->set_method(f.method);
  if (!f.http.empty() || !f.tcp.empty()) {
    HAVEN_TRY(CheckDuration("Interval", f.interval.value_or(0), true));
    d->set_interval_ms(*f.interval);
    HAVEN_TRY(CheckDuration("Timeout", f.timeout.value_or(0), false));
    d->set_timeout_ms(f.timeout.value_or(0) > 0 ? *f.timeout : kDefaultCheckTimeoutMs);
  }
  if (f.deregister_after) {
    HAVEN_TRY(CheckDuration("DeregisterCriticalServiceAfter", *f.deregister_after, false));
    d->set_deregister_critical_after_ms(*f.deregister_after);
  }
  return Status::Ok();
}

// The parts of a check common to the agent and catalog forms. In the catalog form the run
// definition may also sit in a nested "Definition" object, as Consul's HealthCheck has it.
Status ReadCheck(const json::value& v, const std::string& label, bool catalog, pb::Check* c) {
  if (!v.is_object()) return WrongType(label, "object", v);
  Reader r(v.get_object(), label + ".");
  std::string id, name, notes, status, output, service_id;
  HAVEN_TRY(r.String({"CheckID", "ID", "check_id"}, &id));
  HAVEN_TRY(r.String({"Name"}, &name));
  HAVEN_TRY(r.String({"Notes"}, &notes));
  HAVEN_TRY(r.String({"Status"}, &status));
  HAVEN_TRY(r.String({"Output"}, &output));
  HAVEN_TRY(r.String({"ServiceID", "service_id"}, &service_id));
  if (!status.empty() && !IsValidStatus(status)) {
    return Invalid("Invalid check: Status must be passing, warning or critical, got '" + status +
                   "'");
  }
  c->set_id(id);
  c->set_name(name);
  c->set_notes(notes);
  c->set_status(status.empty() ? "critical" : status);  // Consul's initial status
  c->set_output(output.substr(0, std::min(output.size(), kMaxCheckOutputBytes)));
  c->set_service_id(service_id);
  DefinitionFields fields;
  pb::CheckDefinition* d = c->mutable_definition();
  HAVEN_TRY(ReadDefinition(r, &fields, d));
  if (catalog) {
    auto def = r.Object({"Definition"});
    if (!def.ok()) return def.status();
    if (*def) HAVEN_TRY(ReadDefinition(Reader(**def, label + ".Definition."), &fields, d));
  }
  return ApplyDefinition(fields, !catalog, d);
}

// Gathers "Check" and "Checks" (Consul accepts both and appends them in that order).
Status ReadChecks(const Reader& r, bool catalog, std::vector<pb::Check>* out) {
  std::vector<std::pair<const json::value*, std::string>> items;
  if (const json::value* one = r.Has({"Check"})) items.emplace_back(one, r.prefix() + "Check");
  if (const json::value* many = r.Has({"Checks"})) {
    if (!many->is_array()) return WrongType(r.prefix() + "Checks", "array", *many);
    const json::array& a = many->get_array();
    if (a.size() > kMaxChecks) {
      return Invalid("Too many checks: " + std::to_string(a.size()) + " (limit " +
                     std::to_string(kMaxChecks) + ")");
    }
    for (size_t i = 0; i < a.size(); ++i) {
      if (!a[i].is_null())
        items.emplace_back(&a[i], r.prefix() + "Checks[" + std::to_string(i) + "]");
    }
  }
  if (items.size() > kMaxChecks) {
    return Invalid("Too many checks: " + std::to_string(items.size()) + " (limit " +
                   std::to_string(kMaxChecks) + ")");
  }
  for (const auto& [v, label] : items) {
    pb::Check c;
    HAVEN_TRY(ReadCheck(*v, label, catalog, &c));
    out->push_back(std::move(c));
  }
  return Status::Ok();
}

// Ties agent checks to their service, with Consul's default ids and names.
void BindChecksToService(const pb::Service& s, std::vector<pb::Check>* checks) {
  for (size_t i = 0; i < checks->size(); ++i) {
    pb::Check& c = (*checks)[i];
    if (c.id().empty()) {
      std::string id = "service:" + s.id();
      if (checks->size() > 1) id += ":" + std::to_string(i + 1);
      c.set_id(id);
    }
    if (c.name().empty()) c.set_name("Service '" + s.name() + "' check");
    c.set_node(s.node());
    c.set_service_id(s.id());
    c.set_service_name(s.name());
    *c.mutable_service_tags() = s.tags();
  }
}

// ---- sessions ----

Status ReadLockDelay(const Reader& r, int64_t* ms) {
  const json::value* v = r.Has({"LockDelay"});
  if (!v) return Status::Ok();
  if (v->is_number()) {
    double n = v->to_number<double>();
    if (n > 9.2e18 || n < -9.2e18) return Invalid("Invalid LockDelay: out of range");
    *ms =
        n < kLockDelaySecondsBelow ? static_cast<int64_t>(n * 1000) : static_cast<int64_t>(n / 1e6);
  } else {
    std::optional<int64_t> parsed;
    HAVEN_TRY(r.DurationMs({"LockDelay"}, &parsed));
    if (parsed) *ms = *parsed;
  }
  if (*ms < 0 || *ms > kMaxLockDelayMs) {
    return Invalid("Invalid LockDelay '" + FormatDurationMs(*ms) + "', must be between 0s and " +
                   FormatDurationMs(kMaxLockDelayMs));
  }
  return Status::Ok();
}

Status ReadSessionTtl(const Reader& r, int64_t* ms) {
  std::optional<int64_t> ttl;
  HAVEN_TRY(r.DurationMs({"TTL"}, &ttl));
  *ms = ttl.value_or(0);
  if (*ms != 0 && (*ms < kMinSessionTtlMs || *ms > kMaxSessionTtlMs)) {
    return Invalid("Invalid Session TTL '" + FormatDurationMs(*ms) + "', must be between [" +
                   FormatDurationMs(kMinSessionTtlMs) + "=" + FormatDurationMs(kMaxSessionTtlMs) +
                   "]");
  }
  return Status::Ok();
}

Status ReadSessionChecks(const Reader& r, pb::Session* s) {
  google::protobuf::RepeatedPtrField<std::string> checks, node_checks;
  bool has_checks = false, has_node_checks = false;
  HAVEN_TRY(r.StringList({"Checks"}, kMaxChecks, &checks, &has_checks));
  HAVEN_TRY(r.StringList({"NodeChecks"}, kMaxChecks, &node_checks, &has_node_checks));
  if (const json::value* v = r.Has({"ServiceChecks"}); v && !IsEmptyValue(*v)) {
    return Invalid("Invalid session: ServiceChecks are not supported");
  }
  if (!has_checks && !has_node_checks) {
    s->add_node_checks("serfHealth");
    return Status::Ok();
  }
  for (const auto* list : {&checks, &node_checks}) {
    for (const auto& id : *list) {
      if (std::find(s->node_checks().begin(), s->node_checks().end(), id) ==
          s->node_checks().end()) {
        s->add_node_checks(id);
      }
    }
  }
  if (s->node_checks_size() > int(kMaxChecks)) return Invalid("Invalid session: too many checks");
  return Status::Ok();
}

// ---- rendering ----

json::array Strings(const google::protobuf::RepeatedPtrField<std::string>& xs) {
  json::array a;
  a.reserve(xs.size());
  for (const auto& x : xs) a.emplace_back(x);
  return a;
}

json::object StringMapJson(const google::protobuf::Map<std::string, std::string>& m) {
  // Sorted keys: answers are byte-for-byte stable across replicas and runs.
  std::vector<std::pair<std::string, std::string>> sorted(m.begin(), m.end());
  std::sort(sorted.begin(), sorted.end());
  json::object o;
  for (const auto& [k, v] : sorted) o[k] = v;
  return o;
}

json::object WeightsJson(const pb::Service& s) {
  return {{"Passing", s.weight_passing()}, {"Warning", s.weight_warning()}};
}

std::string DurationOrEmpty(int64_t ms) { return ms > 0 ? FormatDurationMs(ms) : ""; }

const char* CheckType(const pb::CheckDefinition& d) {
  if (d.ttl_ms() > 0) return "ttl";
  if (!d.http().empty()) return "http";
  if (!d.tcp().empty()) return "tcp";
  return "";
}

json::object DefinitionJson(const pb::CheckDefinition& d) {
  json::object headers;
  std::vector<std::pair<std::string, std::string>> sorted(d.header().begin(), d.header().end());
  std::sort(sorted.begin(), sorted.end());
  for (const auto& [k, v] : sorted) headers[k] = json::array{json::value(v)};
  json::object o;
  o["HTTP"] = d.http();
  o["Header"] = headers.empty() ? json::value(nullptr) : json::value(std::move(headers));
  o["Method"] = d.method();
  o["TLSSkipVerify"] = d.tls_skip_verify();
  o["TCP"] = d.tcp();
  o["TTL"] = FormatDurationMs(d.ttl_ms());
  o["Interval"] = FormatDurationMs(d.interval_ms());
  o["Timeout"] = FormatDurationMs(d.timeout_ms());
  o["DeregisterCriticalServiceAfter"] = FormatDurationMs(d.deregister_critical_after_ms());
  return o;
}

}  // namespace

// ---- parsers ----

Result<ServiceRegistration> ParseAgentServiceRegister(std::string_view body,
                                                      const std::string& node_name) {
  return Guarded<ServiceRegistration>([&]() -> Result<ServiceRegistration> {
    auto obj = ParseObject(body, false);
    if (!obj.ok()) return obj.status();
    Reader r(*obj, "");
    ServiceRegistration reg;
    HAVEN_TRY(ReadService(r, "Name", &reg.service));
    reg.service.set_node(node_name);
    HAVEN_TRY(ReadChecks(r, false, &reg.checks));
    BindChecksToService(reg.service, &reg.checks);
    return reg;
  });
}

Result<CheckUpdate> ParseCheckUpdate(std::string_view body) {
  return Guarded<CheckUpdate>([&]() -> Result<CheckUpdate> {
    auto obj = ParseObject(body, false);
    if (!obj.ok()) return obj.status();
    Reader r(*obj, "");
    CheckUpdate u;
    HAVEN_TRY(r.String({"Status"}, &u.status));
    if (!IsValidStatus(u.status)) {
      return Invalid("Invalid check status: '" + u.status + "'");
    }
    const json::value* out = r.Has({"Output"});
    if (out && !out->is_string()) return WrongType("Output", "string", *out);
    if (out) {
      // Consul truncates long output rather than refusing the update.
      std::string_view s = out->get_string();
      u.output = std::string(s.substr(0, std::min(s.size(), kMaxCheckOutputBytes)));
    }
    return u;
  });
}

Result<pb::Command> ParseCatalogRegister(std::string_view body) {
  return Guarded<pb::Command>([&]() -> Result<pb::Command> {
    auto obj = ParseObject(body, false);
    if (!obj.ok()) return obj.status();
    Reader r(*obj, "");
    pb::Node node;
    std::string name, address;
    bool skip_node_update = false;
    HAVEN_TRY(r.String({"Node"}, &name));
    HAVEN_TRY(r.String({"Address"}, &address));
    HAVEN_TRY(r.Bool({"SkipNodeUpdate"}, &skip_node_update));
    if (name.empty()) return Invalid("Must provide node");
    if (address.empty() && !skip_node_update) return Invalid("Must provide address");
    node.set_name(name);
    node.set_address(address);
    HAVEN_TRY(r.StringMap({"TaggedAddresses"}, node.mutable_tagged_addresses()));
    HAVEN_TRY(r.Meta({"NodeMeta"}, node.mutable_meta()));
    std::vector<pb::Check> checks;
    HAVEN_TRY(ReadChecks(r, true, &checks));
    for (auto& c : checks) {
      if (c.id().empty()) c.set_id(c.name());  // Consul's default for catalog checks
      if (c.id().empty()) return Invalid("Invalid check: missing CheckID");
      c.set_node(name);
    }
    auto service = r.Object({"Service"});
    if (!service.ok()) return service.status();
    pb::Command cmd;
    if (*service) {
      auto* rs = cmd.mutable_register_service();
      HAVEN_TRY(ReadService(Reader(**service, "Service."), "Service", rs->mutable_service()));
      rs->mutable_service()->set_node(name);
      *rs->mutable_node() = std::move(node);
      for (auto& c : checks) *rs->add_checks() = std::move(c);
    } else {
      auto* rn = cmd.mutable_register_node();
      *rn->mutable_node() = std::move(node);
      for (auto& c : checks) *rn->add_checks() = std::move(c);
    }
    return cmd;
  });
}

Result<pb::Deregister> ParseCatalogDeregister(std::string_view body) {
  return Guarded<pb::Deregister>([&]() -> Result<pb::Deregister> {
    auto obj = ParseObject(body, false);
    if (!obj.ok()) return obj.status();
    Reader r(*obj, "");
    std::string node, service_id, check_id;
    HAVEN_TRY(r.String({"Node"}, &node));
    HAVEN_TRY(r.String({"ServiceID"}, &service_id));
    HAVEN_TRY(r.String({"CheckID"}, &check_id));
    if (node.empty()) return Invalid("Must provide node");
    pb::Deregister d;
    d.set_node(node);
    d.set_service_id(service_id);
    d.set_check_id(check_id);
    return d;
  });
}

Result<pb::Txn> ParseTxn(std::string_view body) {
  return Guarded<pb::Txn>([&]() -> Result<pb::Txn> {
    if (body.size() > kMaxBodyBytes) {
      return Status::TooLarge("Request body larger than " + std::to_string(kMaxBodyBytes) +
                              " bytes");
    }
    boost::system::error_code ec;
    json::parse_options opts;
    opts.max_depth = kMaxJsonDepth;
    json::value v = json::parse(body, ec, json::storage_ptr(), opts);
    if (ec) return Invalid("Failed to parse body: " + ec.message());
    if (!v.is_array()) return WrongType("Request", "array of operations", v);
    const json::array& ops = v.get_array();
    if (ops.size() > registry::kMaxTxnOps) {
      return Status::TooLarge("Transaction contains too many operations (" +
                              std::to_string(ops.size()) + " > " +
                              std::to_string(registry::kMaxTxnOps) + ")");
    }
    static const std::pair<const char*, pb::KVOp::Verb> kVerbs[] = {
        {"set", pb::KVOp::SET},
        {"cas", pb::KVOp::CAS},
        {"lock", pb::KVOp::LOCK},
        {"unlock", pb::KVOp::UNLOCK},
        {"delete", pb::KVOp::DELETE},
        {"delete-cas", pb::KVOp::DELETE_CAS},
        {"delete-tree", pb::KVOp::DELETE_TREE}};
    pb::Txn txn;
    for (size_t i = 0; i < ops.size(); ++i) {
      std::string label = "[" + std::to_string(i) + "]";
      if (!ops[i].is_object()) return WrongType(label, "object", ops[i]);
      Reader outer(ops[i].get_object(), label + ".");
      auto kv = outer.Object({"KV"});
      if (!kv.ok()) return kv.status();
      if (!*kv) return Invalid("Operation " + label + ": only KV operations are supported");
      Reader r(**kv, label + ".KV.");
      std::string verb, key, value64, session;
      int64_t flags = 0, index = 0;
      HAVEN_TRY(r.String({"Verb"}, &verb));
      HAVEN_TRY(r.String({"Key"}, &key));
      HAVEN_TRY(r.String({"Value"}, &value64));
      HAVEN_TRY(r.String({"Session"}, &session));
      HAVEN_TRY(r.Int({"Flags"}, 0, INT64_MAX, &flags));
      HAVEN_TRY(r.Int({"Index"}, 0, INT64_MAX, &index));
      auto* op = txn.add_ops();
      auto it = std::find_if(std::begin(kVerbs), std::end(kVerbs),
                             [&](const auto& p) { return verb == p.first; });
      if (it == std::end(kVerbs)) {
        return Invalid("Operation " + label + ": unsupported KV verb \"" + verb +
                       "\" (supported: set, cas, lock, unlock, delete, delete-cas, delete-tree)");
      }
      auto value = Base64Decode(value64);
      if (!value.ok()) return Invalid("Operation " + label + ": Value is not valid base64");
      op->set_verb(it->second);
      op->set_key(key);
      op->set_value(std::move(*value));
      op->set_flags(static_cast<uint64_t>(flags));
      op->set_cas_index(static_cast<uint64_t>(index));
      op->set_session(session);
    }
    return txn;
  });
}

Result<pb::Session> ParseSessionCreate(std::string_view body, const std::string& node_name) {
  return Guarded<pb::Session>([&]() -> Result<pb::Session> {
    auto obj = ParseObject(body, true);
    if (!obj.ok()) return obj.status();
    Reader r(*obj, "");
    pb::Session s;
    std::string name, node, behavior;
    HAVEN_TRY(r.String({"Name"}, &name));
    HAVEN_TRY(r.String({"Node"}, &node));
    HAVEN_TRY(r.String({"Behavior"}, &behavior));
    if (behavior.empty()) behavior = "release";
    if (behavior != "release" && behavior != "delete") {
      return Invalid("Invalid Behavior setting '" + behavior + "'");
    }
    s.set_name(name);
    s.set_node(node.empty() ? node_name : node);
    s.set_behavior(behavior);
    HAVEN_TRY(ReadSessionChecks(r, &s));
    int64_t ttl_ms = 0, lock_delay_ms = kDefaultLockDelayMs;
    HAVEN_TRY(ReadSessionTtl(r, &ttl_ms));
    HAVEN_TRY(ReadLockDelay(r, &lock_delay_ms));
    s.set_ttl_ms(ttl_ms);
    s.set_lock_delay_ms(lock_delay_ms);
    return s;
  });
}

// ---- renderers ----

boost::json::object AgentService(const pb::Service& s) {
  json::object o;
  o["ID"] = s.id();
  o["Service"] = s.name();
  o["Tags"] = Strings(s.tags());
  o["Meta"] = StringMapJson(s.meta());
  o["Port"] = s.port();
  o["Address"] = s.address();
  o["Weights"] = WeightsJson(s);
  o["EnableTagOverride"] = s.enable_tag_override();
  o["Datacenter"] = kDatacenter;
  return o;
}

boost::json::object HealthCheck(const pb::Check& c) {
  const pb::CheckDefinition& d = c.definition();
  json::object o;
  o["Node"] = c.node();
  o["CheckID"] = c.id();
  o["Name"] = c.name();
  o["Status"] = c.status();
  o["Notes"] = c.notes();
  o["Output"] = c.output();
  o["ServiceID"] = c.service_id();
  o["ServiceName"] = c.service_name();
  o["ServiceTags"] = Strings(c.service_tags());
  o["Type"] = CheckType(d);
  o["Interval"] = DurationOrEmpty(d.interval_ms());
  o["Timeout"] = DurationOrEmpty(d.timeout_ms());
  o["Definition"] = DefinitionJson(d);
  o["CreateIndex"] = c.create_index();
  o["ModifyIndex"] = c.modify_index();
  return o;
}

boost::json::object CatalogNode(const pb::Node& n) {
  json::object o;
  o["ID"] = n.id();
  o["Node"] = n.name();
  o["Address"] = n.address();
  o["Datacenter"] = kDatacenter;
  o["TaggedAddresses"] = StringMapJson(n.tagged_addresses());
  o["Meta"] = StringMapJson(n.meta());
  o["CreateIndex"] = n.create_index();
  o["ModifyIndex"] = n.modify_index();
  return o;
}

boost::json::object CatalogService(const pb::Node& n, const pb::Service& s) {
  json::object o;
  o["ID"] = n.id();
  o["Node"] = n.name();
  o["Address"] = n.address();
  o["Datacenter"] = kDatacenter;
  o["TaggedAddresses"] = StringMapJson(n.tagged_addresses());
  o["NodeMeta"] = StringMapJson(n.meta());
  o["ServiceKind"] = "";
  o["ServiceID"] = s.id();
  o["ServiceName"] = s.name();
  o["ServiceTags"] = Strings(s.tags());
  o["ServiceAddress"] = s.address();
  o["ServiceWeights"] = WeightsJson(s);
  o["ServiceMeta"] = StringMapJson(s.meta());
  o["ServicePort"] = s.port();
  o["ServiceEnableTagOverride"] = s.enable_tag_override();
  o["CreateIndex"] = s.create_index();
  o["ModifyIndex"] = s.modify_index();
  return o;
}

boost::json::object HealthServiceEntry(const pb::Node& n, const pb::Service& s,
                                       const std::vector<const pb::Check*>& checks) {
  json::object service;
  service["ID"] = s.id();
  service["Service"] = s.name();
  service["Tags"] = Strings(s.tags());
  service["Address"] = s.address();
  service["Meta"] = StringMapJson(s.meta());
  service["Port"] = s.port();
  service["Weights"] = WeightsJson(s);
  service["EnableTagOverride"] = s.enable_tag_override();
  service["CreateIndex"] = s.create_index();
  service["ModifyIndex"] = s.modify_index();
  json::array check_list;
  for (const pb::Check* c : checks) {
    if (c) check_list.emplace_back(HealthCheck(*c));
  }
  json::object o;
  o["Node"] = CatalogNode(n);
  o["Service"] = std::move(service);
  o["Checks"] = std::move(check_list);
  return o;
}

boost::json::object KVEntry(const pb::KVEntry& e) {
  json::object o;
  o["LockIndex"] = e.lock_index();
  o["Key"] = e.key();
  o["Flags"] = e.flags();
  o["Value"] = e.value().empty() ? json::value(nullptr) : json::value(Base64Encode(e.value()));
  if (!e.session().empty()) o["Session"] = e.session();
  o["CreateIndex"] = e.create_index();
  o["ModifyIndex"] = e.modify_index();
  return o;
}

boost::json::object Session(const pb::Session& s) {
  json::object o;
  o["ID"] = s.id();
  o["Name"] = s.name();
  o["Node"] = s.node();
  o["LockDelay"] = s.lock_delay_ms() * 1'000'000;  // nanoseconds, as Go encodes time.Duration
  o["Behavior"] = s.behavior().empty() ? "release" : s.behavior();
  o["TTL"] = DurationOrEmpty(s.ttl_ms());
  o["NodeChecks"] = Strings(s.node_checks());
  o["ServiceChecks"] = nullptr;
  o["Checks"] = Strings(s.node_checks());
  o["CreateIndex"] = s.create_index();
  o["ModifyIndex"] = s.modify_index();
  return o;
}

std::string ToJson(const boost::json::value& v) { return json::serialize(v); }

}  // namespace haven::node::consul
