// Splices the headers table of raw AMQP basic properties. Only the entries we set are encoded;
// every other property and header entry is cut out of the input and copied back unchanged, so a
// header the codec would re-encode differently ('U', 'L', a duplicate name) stays as it was sent.
#include "mq/x_death.h"

#include <algorithm>
#include <array>
#include <limits>
#include <optional>
#include <utility>

#include "mq/amqp_codec.h"

namespace haven::mq {
namespace {

using namespace amqp;  // NOLINT(google-build-using-namespace): the property flags

// Bounds-checked reads; a read past the end fails the cursor and every later read.
class Cursor {
 public:
  explicit Cursor(std::string_view in) : in_(in) {}

  bool ok() const { return ok_; }
  bool at_end() const { return pos_ == in_.size(); }
  size_t pos() const { return pos_; }
  void Fail() { ok_ = false; }

  std::string_view Take(size_t n) {
    if (!ok_ || in_.size() - pos_ < n) {
      ok_ = false;
      return {};
    }
    std::string_view out = in_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  uint64_t Uint(size_t n) {
    uint64_t v = 0;
    for (unsigned char c : Take(n)) v = (v << 8) | c;
    return v;
  }
  std::string_view ShortStr() { return Take(Uint(1)); }
  std::string_view LongBytes() { return Take(Uint(4)); }
  // The bytes read since `start`.
  std::string_view Since(size_t start) const { return in_.substr(start, pos_ - start); }

 private:
  std::string_view in_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// Skips one field value (type octet and bytes). Nested arrays and tables are skipped by their
// length: they are copied, never read.
void SkipValue(Cursor& c) {
  switch (static_cast<char>(c.Uint(1))) {
    case 'V':
      return;
    case 't':
    case 'b':
    case 'B':
      c.Take(1);
      return;
    case 's':
    case 'u':
    case 'U':
      c.Take(2);
      return;
    case 'I':
    case 'i':
    case 'f':
      c.Take(4);
      return;
    case 'D':
      c.Take(5);
      return;
    case 'l':
    case 'L':
    case 'd':
    case 'T':
      c.Take(8);
      return;
    case 'S':
    case 'x':
    case 'A':
    case 'F':
      c.LongBytes();
      return;
    default:
      c.Fail();
  }
}

// One header entry; `value` is its type octet and bytes as on the wire.
struct RawEntry {
  std::string name;
  std::string value;
};

// Raw properties cut around the headers table.
struct SplitProperties {
  uint16_t flags = 0;
  std::string_view before;  // content-type, content-encoding
  std::vector<RawEntry> headers;
  std::string_view after;  // delivery-mode .. cluster-id
};

Status Malformed(const std::string& why) {
  return Status::InvalidArgument("malformed message properties: " + why);
}

// Reads the headers table body into entries.
bool SplitHeaders(std::string_view table, std::vector<RawEntry>* out) {
  Cursor t(table);
  while (t.ok() && !t.at_end()) {
    std::string_view name = t.ShortStr();
    size_t at = t.pos();
    SkipValue(t);
    if (t.ok()) out->push_back({std::string(name), std::string(t.Since(at))});
  }
  return t.ok();
}

// Skips, in wire order, the properties after the headers that `flags` has, up to `last` included.
void SkipAfterHeaders(Cursor& c, uint16_t flags, uint16_t last) {
  constexpr std::array<std::pair<uint16_t, int>, 11> kLayout = {
      {{kFlagDeliveryMode, 1},
       {kFlagPriority, 1},
       {kFlagCorrelationId, 0},
       {kFlagReplyTo, 0},
       {kFlagExpiration, 0},
       {kFlagMessageId, 0},
       {kFlagTimestamp, 8},
       {kFlagType, 0},
       {kFlagUserId, 0},
       {kFlagAppId, 0},
       {kFlagClusterId, 0}}};  // 0: shortstr
  for (auto [flag, size] : kLayout) {
    if (flag < last) break;
    if (!(flags & flag)) continue;
    if (size == 0) {
      c.ShortStr();
    } else {
      c.Take(static_cast<size_t>(size));
    }
  }
}

Result<SplitProperties> Split(std::string_view raw) {
  Cursor c(raw);
  SplitProperties p;
  p.flags = static_cast<uint16_t>(c.Uint(2));
  if (!c.ok()) return Malformed("no property flags");
  if (p.flags & kUnknownFlags) return Malformed("unknown property flags");
  size_t start = c.pos();
  if (p.flags & kFlagContentType) c.ShortStr();
  if (p.flags & kFlagContentEncoding) c.ShortStr();
  p.before = c.Since(start);
  if (p.flags & kFlagHeaders) {
    std::string_view table = c.LongBytes();
    if (c.ok() && !SplitHeaders(table, &p.headers)) return Malformed("bad headers table");
  }
  start = c.pos();
  SkipAfterHeaders(c, p.flags, kFlagClusterId);
  p.after = c.Since(start);
  if (!c.ok()) return Malformed("truncated");
  if (!c.at_end()) return Malformed("bytes after the properties");
  return p;
}

// `after` without its expiration property, and that property's value (nullopt if none).
std::pair<std::string, std::optional<std::string>> TakeExpiration(uint16_t flags,
                                                                  std::string_view after) {
  if (!(flags & kFlagExpiration)) return {std::string(after), std::nullopt};
  Cursor c(after);
  SkipAfterHeaders(c, flags, kFlagReplyTo);
  size_t at = c.pos();
  std::string expiration(c.ShortStr());
  std::string rest = std::string(after.substr(0, at)) + std::string(after.substr(c.pos()));
  return {std::move(rest), std::move(expiration)};
}

void PutUint(std::string& out, uint64_t v, int bytes) {
  for (int shift = (bytes - 1) * 8; shift >= 0; shift -= 8) {
    out.push_back(static_cast<char>((v >> shift) & 0xFF));
  }
}

std::string Join(uint16_t flags, std::string_view before, const std::vector<RawEntry>& headers,
                 std::string_view after) {
  std::string table;
  for (const RawEntry& e : headers) {
    table.push_back(static_cast<char>(e.name.size()));  // names are short strings
    table += e.name;
    table += e.value;
  }
  std::string out;
  PutUint(out, flags | kFlagHeaders, 2);
  out += before;
  PutUint(out, table.size(), 4);
  out += table;
  out += after;
  return out;
}

// A value's wire form (type octet + bytes), by way of a one-entry table with an empty name.
std::string EncodeValue(const amqp::FieldValue& v) {
  amqp::FieldTable t;
  t.entries.push_back({"", v});
  return amqp::EncodeFieldTable(t).substr(5);  // table size (4), name length (1)
}

std::optional<amqp::FieldValue> DecodeValue(std::string_view raw_value) {
  std::string table;
  PutUint(table, raw_value.size() + 1, 4);
  table.push_back('\0');
  table += raw_value;
  auto t = amqp::DecodeFieldTable(table);
  if (!t.ok() || t->entries.size() != 1) return std::nullopt;
  return std::move(t->entries[0].value);
}

const RawEntry* FindEntry(const std::vector<RawEntry>& headers, std::string_view name) {
  for (const RawEntry& e : headers) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

void SetEntry(std::vector<RawEntry>& headers, std::string_view name, std::string value) {
  for (RawEntry& e : headers) {
    if (e.name == name) {
      e.value = std::move(value);
      return;
    }
  }
  headers.push_back({std::string(name), std::move(value)});
}

void SetIfAbsent(std::vector<RawEntry>& headers, std::string_view name, std::string value) {
  if (!FindEntry(headers, name)) headers.push_back({std::string(name), std::move(value)});
}

bool HasText(const amqp::FieldTable& t, std::string_view key, std::string_view want) {
  const amqp::FieldValue* v = t.Find(key);
  return v && v->AsString() == want;
}

bool IsEntryFor(const amqp::FieldValue& item, const DeathEvent& death) {
  const auto* t = item.get_if<amqp::FieldTable>();
  return t && HasText(*t, "queue", death.queue) && HasText(*t, "reason", death.reason);
}

// RabbitMQ's x-death entry, its keys in RabbitMQ's (sorted) order.
amqp::FieldTable NewEntry(const DeathEvent& death, const std::optional<std::string>& expiration) {
  amqp::FieldArray keys;
  for (const std::string& k : death.routing_keys) keys.items.emplace_back(k);
  amqp::FieldTable t;
  t.Set("count", int64_t{1});
  t.Set("exchange", death.exchange);
  if (expiration) t.Set("original-expiration", *expiration);
  t.Set("queue", death.queue);
  t.Set("reason", death.reason);
  t.Set("routing-keys", std::move(keys));
  t.Set("time", amqp::Timestamp{death.time_unix_s});
  return t;
}

// An existing entry: one more death; its time, exchange and routing keys stay the first ones.
void IncrementCount(amqp::FieldTable& t) {
  const amqp::FieldValue* v = t.Find("count");
  int64_t n = v ? v->AsInt().value_or(0) : 0;
  if (n < std::numeric_limits<int64_t>::max()) ++n;
  t.Set("count", std::max<int64_t>(n, 1));
}

// Keeps the most recent entries within kMaxXDeathEntries and kMaxXDeathBytes.
void Bound(std::vector<amqp::FieldValue>& items) {
  if (items.size() > kMaxXDeathEntries) items.resize(kMaxXDeathEntries);
  size_t bytes = 5;  // type octet and array size
  for (size_t i = 0; i < items.size(); ++i) {
    bytes += EncodeValue(items[i]).size();
    if (i > 0 && bytes > kMaxXDeathBytes) {
      items.resize(i);
      return;
    }
  }
}

std::string Text(std::string_view s) { return EncodeValue(amqp::FieldValue(std::string(s))); }

}  // namespace

std::string_view DeathReasonName(pb::DeadLetterReason reason) {
  switch (reason) {
    case pb::DEAD_LETTER_REJECTED:
      return "rejected";
    case pb::DEAD_LETTER_EXPIRED:
      return "expired";
    case pb::DEAD_LETTER_MAXLEN:
      return "maxlen";
    case pb::DEAD_LETTER_DELIVERY_LIMIT:
      return "delivery_limit";
    default:
      return "unknown";
  }
}

Result<std::string> AddDeath(std::string_view raw_properties, const DeathEvent& death) {
  auto split = Split(raw_properties);
  if (!split.ok()) return split.status();
  SplitProperties& p = *split;
  auto [after, expiration] = TakeExpiration(p.flags, p.after);
  std::optional<amqp::FieldTable> entry;
  std::vector<amqp::FieldValue> items(1);  // [0]: this death's entry
  if (const RawEntry* old = FindEntry(p.headers, "x-death")) {
    std::optional<amqp::FieldValue> v = DecodeValue(old->value);
    const auto* array = v ? v->get_if<amqp::FieldArray>() : nullptr;
    for (size_t i = 0; array && i < array->items.size(); ++i) {
      const amqp::FieldValue& item = array->items[i];
      if (!entry && IsEntryFor(item, death)) {
        entry = *item.get_if<amqp::FieldTable>();
      } else {
        items.push_back(item);
      }
    }
  }
  if (entry) {
    IncrementCount(*entry);
  } else {
    entry = NewEntry(death, expiration);
  }
  items[0] = std::move(*entry);
  Bound(items);
  SetEntry(p.headers, "x-death", EncodeValue(amqp::FieldArray(std::move(items))));
  SetIfAbsent(p.headers, "x-first-death-exchange", Text(death.exchange));
  SetIfAbsent(p.headers, "x-first-death-queue", Text(death.queue));
  SetIfAbsent(p.headers, "x-first-death-reason", Text(death.reason));
  SetEntry(p.headers, "x-last-death-exchange", Text(death.exchange));
  SetEntry(p.headers, "x-last-death-queue", Text(death.queue));
  SetEntry(p.headers, "x-last-death-reason", Text(death.reason));
  return Join(static_cast<uint16_t>(p.flags & ~kFlagExpiration), p.before, p.headers, after);
}

Result<std::string> WithHeader(std::string_view raw_properties, std::string_view name,
                               const amqp::FieldValue& value) {
  if (name.size() > 255) return Status::InvalidArgument("header name longer than 255 bytes");
  auto split = Split(raw_properties);
  if (!split.ok()) return split.status();
  SetEntry(split->headers, name, EncodeValue(value));
  return Join(split->flags, split->before, split->headers, split->after);
}

}  // namespace haven::mq
