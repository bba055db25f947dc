// AMQP 0-9-1 codec. Decoding never reads past its input: every read checks the bytes left first,
// and a failed read poisons the reader so later reads fail too.
#include "mq/amqp_codec.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <type_traits>
#include <utility>

namespace haven::mq::amqp {

// ---- Field value helpers (declared in amqp_types.h) ---------------------------------------------
FieldArray::FieldArray() = default;
FieldArray::FieldArray(std::vector<FieldValue> values) : items(std::move(values)) {}
FieldArray::FieldArray(const FieldArray&) = default;
FieldArray::FieldArray(FieldArray&&) noexcept = default;
FieldArray& FieldArray::operator=(const FieldArray&) = default;
FieldArray& FieldArray::operator=(FieldArray&&) noexcept = default;
FieldArray::~FieldArray() = default;
FieldTable::FieldTable() = default;
FieldTable::FieldTable(const FieldTable&) = default;
FieldTable::FieldTable(FieldTable&&) noexcept = default;
FieldTable& FieldTable::operator=(const FieldTable&) = default;
FieldTable& FieldTable::operator=(FieldTable&&) noexcept = default;
FieldTable::~FieldTable() = default;

bool FieldArray::operator==(const FieldArray& o) const { return items == o.items; }
bool FieldTable::operator==(const FieldTable& o) const { return entries == o.entries; }
bool FieldTable::empty() const { return entries.empty(); }

const FieldValue* FieldTable::Find(std::string_view name) const {
  for (const auto& [key, value] : entries) {
    if (key == name) return &value;
  }
  return nullptr;
}

void FieldTable::Set(std::string name, FieldValue value) {
  for (auto& [key, v] : entries) {
    if (key == name) {
      v = std::move(value);
      return;
    }
  }
  entries.push_back({std::move(name), std::move(value)});
}

std::optional<int64_t> FieldValue::AsInt() const {
  return std::visit(
      [](const auto& v) -> std::optional<int64_t> {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          return static_cast<int64_t>(v);
        } else {
          return std::nullopt;
        }
      },
      value);
}

std::optional<std::string_view> FieldValue::AsString() const {
  if (const auto* s = std::get_if<std::string>(&value)) return std::string_view(*s);
  if (const auto* b = std::get_if<ByteArray>(&value)) return std::string_view(b->bytes);
  return std::nullopt;
}

// ---- Errors -------------------------------------------------------------------------------------
namespace {
constexpr std::string_view kErrorPrefix = "[amqp ";
}

Status MakeAmqpError(uint16_t code, std::string text, uint16_t class_id, uint16_t method_id) {
  std::string msg = std::string(kErrorPrefix) + std::to_string(code) + " " +
                    std::to_string(class_id) + "/" + std::to_string(method_id) + "] " + text;
  return Status(code == kInternalError ? Code::kInternal : Code::kInvalidArgument, std::move(msg));
}

namespace {
// Parses a decimal number at `s`, then expects `sep`; advances `s`.
bool ParseField(std::string_view& s, char sep, uint16_t* out) {
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  if (ec != std::errc() || ptr == s.data() + s.size() || *ptr != sep) return false;
  s.remove_prefix(static_cast<size_t>(ptr - s.data()) + 1);
  return true;
}
}  // namespace

AmqpError ToAmqpError(const Status& status) {
  std::string_view m = status.message();
  AmqpError e;
  if (m.substr(0, kErrorPrefix.size()) == kErrorPrefix) {
    std::string_view rest = m.substr(kErrorPrefix.size());
    if (ParseField(rest, ' ', &e.code) && ParseField(rest, '/', &e.class_id) &&
        ParseField(rest, ']', &e.method_id)) {
      if (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
      e.text = std::string(rest);
      return e;
    }
  }
  return AmqpError{kInternalError, std::string(m), 0, 0};
}

// ---- Byte reading and writing -------------------------------------------------------------------
namespace {

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}

  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }
  size_t remaining() const { return in_.size() - pos_; }
  bool at_end() const { return pos_ == in_.size(); }
  void Fail(std::string why) {
    if (ok_) error_ = std::move(why);
    ok_ = false;
  }

  bool Bytes(size_t n, std::string_view* out) {
    if (!ok_) return false;
    if (remaining() < n) {
      Fail("truncated: need " + std::to_string(n) + " bytes, have " + std::to_string(remaining()));
      return false;
    }
    *out = in_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  template <typename T>
  bool Uint(T* out) {
    std::string_view b;
    if (!Bytes(sizeof(T), &b)) return false;
    T v = 0;
    for (unsigned char c : b) v = static_cast<T>((v << 8) | c);
    *out = v;
    return true;
  }
  bool U8(uint8_t* v) { return Uint(v); }
  bool U16(uint16_t* v) { return Uint(v); }
  bool U32(uint32_t* v) { return Uint(v); }
  bool U64(uint64_t* v) { return Uint(v); }
  bool ShortStr(std::string* out) {
    uint8_t n = 0;
    std::string_view b;
    if (!U8(&n) || !Bytes(n, &b)) return false;
    out->assign(b);
    return true;
  }
  bool LongBytes(std::string_view* out) {
    uint32_t n = 0;
    return U32(&n) && Bytes(n, out);
  }
  bool LongStr(std::string* out) {
    std::string_view b;
    if (!LongBytes(&b)) return false;
    out->assign(b);
    return true;
  }

 private:
  std::string_view in_;
  size_t pos_ = 0;
  bool ok_ = true;
  std::string error_;
};

template <typename T>
void PutUint(std::string& out, T v) {
  for (int shift = (sizeof(T) - 1) * 8; shift >= 0; shift -= 8) {
    out.push_back(static_cast<char>((v >> shift) & 0xFF));
  }
}
void PutShortStr(std::string& out, std::string_view s) {
  s = s.substr(0, 255);
  out.push_back(static_cast<char>(s.size()));
  out.append(s);
}
void PutLongStr(std::string& out, std::string_view s) {
  PutUint<uint32_t>(out, static_cast<uint32_t>(s.size()));
  out.append(s);
}

// ---- Field tables -------------------------------------------------------------------------------
bool ReadTable(Reader& r, FieldTable* out, int depth);
bool ReadValue(Reader& r, FieldValue* out, int depth);

bool ReadArrayBody(std::string_view bytes, FieldArray* out, int depth, Reader& outer) {
  Reader r(bytes);
  while (r.ok() && !r.at_end()) {
    FieldValue v;
    if (!ReadValue(r, &v, depth)) break;
    out->items.push_back(std::move(v));
  }
  if (!r.ok()) outer.Fail("in array: " + r.error());
  return r.ok();
}

bool ReadTableBody(std::string_view bytes, FieldTable* out, int depth, Reader& outer) {
  Reader r(bytes);
  while (r.ok() && !r.at_end()) {
    std::string name;
    FieldValue v;
    if (!r.ShortStr(&name) || !ReadValue(r, &v, depth)) break;
    out->entries.push_back({std::move(name), std::move(v)});
  }
  if (!r.ok()) outer.Fail("in table: " + r.error());
  return r.ok();
}

bool ReadTable(Reader& r, FieldTable* out, int depth) {
  if (depth > kMaxFieldDepth) {
    r.Fail("field tables nested deeper than " + std::to_string(kMaxFieldDepth));
    return false;
  }
  std::string_view body;
  return r.LongBytes(&body) && ReadTableBody(body, out, depth, r);
}

template <typename T>
bool ReadInt(Reader& r, FieldValue* out) {
  using U = std::make_unsigned_t<T>;
  U u = 0;
  if (!r.Uint(&u)) return false;
  out->value = static_cast<T>(u);
  return true;
}

bool ReadValue(Reader& r, FieldValue* out, int depth) {
  uint8_t tag = 0;
  if (!r.U8(&tag)) return false;
  switch (tag) {
    case 't': {
      uint8_t b = 0;
      if (!r.U8(&b)) return false;
      out->value = b != 0;
      return true;
    }
    case 'b':
      return ReadInt<int8_t>(r, out);
    case 'B':
      return ReadInt<uint8_t>(r, out);
    case 's':
    case 'U':
      return ReadInt<int16_t>(r, out);
    case 'u':
      return ReadInt<uint16_t>(r, out);
    case 'I':
      return ReadInt<int32_t>(r, out);
    case 'i':
      return ReadInt<uint32_t>(r, out);
    case 'l':
    case 'L':
      return ReadInt<int64_t>(r, out);
    case 'f': {
      uint32_t bits = 0;
      if (!r.U32(&bits)) return false;
      float f;
      std::memcpy(&f, &bits, sizeof f);
      out->value = f;
      return true;
    }
    case 'd': {
      uint64_t bits = 0;
      if (!r.U64(&bits)) return false;
      double d;
      std::memcpy(&d, &bits, sizeof d);
      out->value = d;
      return true;
    }
    case 'D': {
      Decimal d;
      if (!r.U8(&d.scale) || !r.U32(&d.value)) return false;
      out->value = d;
      return true;
    }
    case 'S': {
      std::string s;
      if (!r.LongStr(&s)) return false;
      out->value = std::move(s);
      return true;
    }
    case 'x': {
      ByteArray b;
      if (!r.LongStr(&b.bytes)) return false;
      out->value = std::move(b);
      return true;
    }
    case 'T': {
      Timestamp t;
      if (!r.U64(&t.seconds)) return false;
      out->value = t;
      return true;
    }
    case 'V':
      out->value = Void{};
      return true;
    case 'A': {
      if (depth + 1 > kMaxFieldDepth) {
        r.Fail("field arrays nested deeper than " + std::to_string(kMaxFieldDepth));
        return false;
      }
      std::string_view body;
      FieldArray a;
      if (!r.LongBytes(&body) || !ReadArrayBody(body, &a, depth + 1, r)) return false;
      out->value = std::move(a);
      return true;
    }
    case 'F': {
      FieldTable t;
      if (!ReadTable(r, &t, depth + 1)) return false;
      out->value = std::move(t);
      return true;
    }
    default:
      r.Fail("unknown field type 0x" + std::to_string(tag));
      return false;
  }
}

void WriteTable(std::string& out, const FieldTable& table);

void WriteValue(std::string& out, const FieldValue& fv) {
  std::visit(
      [&out](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, Void>) {
          out.push_back('V');
        } else if constexpr (std::is_same_v<T, bool>) {
          out.push_back('t');
          out.push_back(v ? 1 : 0);
        } else if constexpr (std::is_same_v<T, int8_t>) {
          out.push_back('b');
          PutUint<uint8_t>(out, static_cast<uint8_t>(v));
        } else if constexpr (std::is_same_v<T, uint8_t>) {
          out.push_back('B');
          PutUint<uint8_t>(out, v);
        } else if constexpr (std::is_same_v<T, int16_t>) {
          out.push_back('s');
          PutUint<uint16_t>(out, static_cast<uint16_t>(v));
        } else if constexpr (std::is_same_v<T, uint16_t>) {
          out.push_back('u');
          PutUint<uint16_t>(out, v);
        } else if constexpr (std::is_same_v<T, int32_t>) {
          out.push_back('I');
          PutUint<uint32_t>(out, static_cast<uint32_t>(v));
        } else if constexpr (std::is_same_v<T, uint32_t>) {
          out.push_back('i');
          PutUint<uint32_t>(out, v);
        } else if constexpr (std::is_same_v<T, int64_t>) {
          out.push_back('l');
          PutUint<uint64_t>(out, static_cast<uint64_t>(v));
        } else if constexpr (std::is_same_v<T, float>) {
          uint32_t bits;
          std::memcpy(&bits, &v, sizeof bits);
          out.push_back('f');
          PutUint<uint32_t>(out, bits);
        } else if constexpr (std::is_same_v<T, double>) {
          uint64_t bits;
          std::memcpy(&bits, &v, sizeof bits);
          out.push_back('d');
          PutUint<uint64_t>(out, bits);
        } else if constexpr (std::is_same_v<T, Decimal>) {
          out.push_back('D');
          PutUint<uint8_t>(out, v.scale);
          PutUint<uint32_t>(out, v.value);
        } else if constexpr (std::is_same_v<T, std::string>) {
          out.push_back('S');
          PutLongStr(out, v);
        } else if constexpr (std::is_same_v<T, ByteArray>) {
          out.push_back('x');
          PutLongStr(out, v.bytes);
        } else if constexpr (std::is_same_v<T, FieldArray>) {
          out.push_back('A');
          size_t at = out.size();
          PutUint<uint32_t>(out, 0);
          for (const auto& item : v.items) WriteValue(out, item);
          uint32_t n = static_cast<uint32_t>(out.size() - at - 4);
          for (int i = 0; i < 4; ++i) out[at + i] = static_cast<char>((n >> (24 - 8 * i)) & 0xFF);
        } else if constexpr (std::is_same_v<T, Timestamp>) {
          out.push_back('T');
          PutUint<uint64_t>(out, v.seconds);
        } else if constexpr (std::is_same_v<T, FieldTable>) {
          out.push_back('F');
          WriteTable(out, v);
        }
      },
      fv.value);
}

void WriteTable(std::string& out, const FieldTable& table) {
  size_t at = out.size();
  PutUint<uint32_t>(out, 0);
  for (const auto& [name, value] : table.entries) {
    PutShortStr(out, name);
    WriteValue(out, value);
  }
  uint32_t n = static_cast<uint32_t>(out.size() - at - 4);
  for (int i = 0; i < 4; ++i) out[at + i] = static_cast<char>((n >> (24 - 8 * i)) & 0xFF);
}

// ---- Method argument visitors -------------------------------------------------------------------
// Each method lists its fields once (Fields below); these visitors decode or encode that list.
// Consecutive bits share an octet, low bit first (spec 4.2.5.2).
struct ArgDecoder {
  Reader& r;
  int bit = 8;  // next bit in `octet`; 8 = need a new octet
  uint8_t octet = 0;

  void Octet(uint8_t& v) { bit = 8, r.U8(&v); }
  void Short(uint16_t& v) { bit = 8, r.U16(&v); }
  void Long(uint32_t& v) { bit = 8, r.U32(&v); }
  void LongLong(uint64_t& v) { bit = 8, r.U64(&v); }
  void ShortStr(std::string& v) { bit = 8, r.ShortStr(&v); }
  void LongStr(std::string& v) { bit = 8, r.LongStr(&v); }
  void Table(FieldTable& v) { bit = 8, ReadTable(r, &v, 0); }
  void Bit(bool& v) {
    if (bit == 8) {
      if (!r.U8(&octet)) return;
      bit = 0;
    }
    v = (octet >> bit++) & 1;
  }
};

struct ArgEncoder {
  std::string& out;
  int bit = 8;
  size_t octet_at = 0;

  void Octet(const uint8_t& v) { bit = 8, PutUint<uint8_t>(out, v); }
  void Short(const uint16_t& v) { bit = 8, PutUint<uint16_t>(out, v); }
  void Long(const uint32_t& v) { bit = 8, PutUint<uint32_t>(out, v); }
  void LongLong(const uint64_t& v) { bit = 8, PutUint<uint64_t>(out, v); }
  void ShortStr(const std::string& v) { bit = 8, PutShortStr(out, v); }
  void LongStr(const std::string& v) { bit = 8, PutLongStr(out, v); }
  void Table(const FieldTable& v) { bit = 8, WriteTable(out, v); }
  void Bit(const bool& v) {
    if (bit == 8) {
      octet_at = out.size();
      out.push_back(0);
      bit = 0;
    }
    if (v) out[octet_at] = static_cast<char>(out[octet_at] | (1 << bit));
    ++bit;
  }
};

// Methods without arguments.
template <typename V, typename M>
void Fields(V&, M&) {}

// M is the method type, possibly const (encoding); V the visitor.
#define HAVEN_FIELDS(T)                              \
  template <typename V, typename M>                  \
  requires std::is_same_v<std::remove_const_t<M>, T> \
  void Fields(V& v, M& m)

HAVEN_FIELDS(ConnectionStart) {
  v.Octet(m.version_major), v.Octet(m.version_minor), v.Table(m.server_properties);
  v.LongStr(m.mechanisms), v.LongStr(m.locales);
}
HAVEN_FIELDS(ConnectionStartOk) {
  v.Table(m.client_properties), v.ShortStr(m.mechanism), v.LongStr(m.response);
  v.ShortStr(m.locale);
}
HAVEN_FIELDS(ConnectionSecure) { v.LongStr(m.challenge); }
HAVEN_FIELDS(ConnectionSecureOk) { v.LongStr(m.response); }
HAVEN_FIELDS(ConnectionTune) { v.Short(m.channel_max), v.Long(m.frame_max), v.Short(m.heartbeat); }
HAVEN_FIELDS(ConnectionTuneOk) {
  v.Short(m.channel_max), v.Long(m.frame_max), v.Short(m.heartbeat);
}
HAVEN_FIELDS(ConnectionOpen) {
  v.ShortStr(m.virtual_host), v.ShortStr(m.reserved1), v.Bit(m.reserved2);
}
HAVEN_FIELDS(ConnectionOpenOk) { v.ShortStr(m.reserved1); }
HAVEN_FIELDS(ConnectionClose) {
  v.Short(m.reply_code), v.ShortStr(m.reply_text), v.Short(m.class_id), v.Short(m.method_id);
}
HAVEN_FIELDS(ConnectionBlocked) { v.ShortStr(m.reason); }
HAVEN_FIELDS(ChannelOpen) { v.ShortStr(m.reserved1); }
HAVEN_FIELDS(ChannelOpenOk) { v.LongStr(m.reserved1); }
HAVEN_FIELDS(ChannelFlow) { v.Bit(m.active); }
HAVEN_FIELDS(ChannelFlowOk) { v.Bit(m.active); }
HAVEN_FIELDS(ChannelClose) {
  v.Short(m.reply_code), v.ShortStr(m.reply_text), v.Short(m.class_id), v.Short(m.method_id);
}
HAVEN_FIELDS(ExchangeDeclare) {
  v.Short(m.reserved1), v.ShortStr(m.exchange), v.ShortStr(m.type), v.Bit(m.passive);
  v.Bit(m.durable), v.Bit(m.auto_delete), v.Bit(m.internal), v.Bit(m.no_wait);
  v.Table(m.arguments);
}
HAVEN_FIELDS(ExchangeDelete) {
  v.Short(m.reserved1), v.ShortStr(m.exchange), v.Bit(m.if_unused), v.Bit(m.no_wait);
}
HAVEN_FIELDS(ExchangeBind) {
  v.Short(m.reserved1), v.ShortStr(m.destination), v.ShortStr(m.source);
  v.ShortStr(m.routing_key), v.Bit(m.no_wait), v.Table(m.arguments);
}
HAVEN_FIELDS(ExchangeUnbind) {
  v.Short(m.reserved1), v.ShortStr(m.destination), v.ShortStr(m.source);
  v.ShortStr(m.routing_key), v.Bit(m.no_wait), v.Table(m.arguments);
}
HAVEN_FIELDS(QueueDeclare) {
  v.Short(m.reserved1), v.ShortStr(m.queue), v.Bit(m.passive), v.Bit(m.durable);
  v.Bit(m.exclusive), v.Bit(m.auto_delete), v.Bit(m.no_wait), v.Table(m.arguments);
}
HAVEN_FIELDS(QueueDeclareOk) {
  v.ShortStr(m.queue), v.Long(m.message_count), v.Long(m.consumer_count);
}
HAVEN_FIELDS(QueueBind) {
  v.Short(m.reserved1), v.ShortStr(m.queue), v.ShortStr(m.exchange), v.ShortStr(m.routing_key);
  v.Bit(m.no_wait), v.Table(m.arguments);
}
HAVEN_FIELDS(QueuePurge) { v.Short(m.reserved1), v.ShortStr(m.queue), v.Bit(m.no_wait); }
HAVEN_FIELDS(QueuePurgeOk) { v.Long(m.message_count); }
HAVEN_FIELDS(QueueDelete) {
  v.Short(m.reserved1), v.ShortStr(m.queue), v.Bit(m.if_unused), v.Bit(m.if_empty);
  v.Bit(m.no_wait);
}
HAVEN_FIELDS(QueueDeleteOk) { v.Long(m.message_count); }
HAVEN_FIELDS(QueueUnbind) {
  v.Short(m.reserved1), v.ShortStr(m.queue), v.ShortStr(m.exchange), v.ShortStr(m.routing_key);
  v.Table(m.arguments);
}
HAVEN_FIELDS(BasicQos) { v.Long(m.prefetch_size), v.Short(m.prefetch_count), v.Bit(m.global); }
HAVEN_FIELDS(BasicConsume) {
  v.Short(m.reserved1), v.ShortStr(m.queue), v.ShortStr(m.consumer_tag), v.Bit(m.no_local);
  v.Bit(m.no_ack), v.Bit(m.exclusive), v.Bit(m.no_wait), v.Table(m.arguments);
}
HAVEN_FIELDS(BasicConsumeOk) { v.ShortStr(m.consumer_tag); }
HAVEN_FIELDS(BasicCancel) { v.ShortStr(m.consumer_tag), v.Bit(m.no_wait); }
HAVEN_FIELDS(BasicCancelOk) { v.ShortStr(m.consumer_tag); }
HAVEN_FIELDS(BasicPublish) {
  v.Short(m.reserved1), v.ShortStr(m.exchange), v.ShortStr(m.routing_key), v.Bit(m.mandatory);
  v.Bit(m.immediate);
}
HAVEN_FIELDS(BasicReturn) {
  v.Short(m.reply_code), v.ShortStr(m.reply_text), v.ShortStr(m.exchange);
  v.ShortStr(m.routing_key);
}
HAVEN_FIELDS(BasicDeliver) {
  v.ShortStr(m.consumer_tag), v.LongLong(m.delivery_tag), v.Bit(m.redelivered);
  v.ShortStr(m.exchange), v.ShortStr(m.routing_key);
}
HAVEN_FIELDS(BasicGet) { v.Short(m.reserved1), v.ShortStr(m.queue), v.Bit(m.no_ack); }
HAVEN_FIELDS(BasicGetOk) {
  v.LongLong(m.delivery_tag), v.Bit(m.redelivered), v.ShortStr(m.exchange);
  v.ShortStr(m.routing_key), v.Long(m.message_count);
}
HAVEN_FIELDS(BasicGetEmpty) { v.ShortStr(m.reserved1); }
HAVEN_FIELDS(BasicAck) { v.LongLong(m.delivery_tag), v.Bit(m.multiple); }
HAVEN_FIELDS(BasicReject) { v.LongLong(m.delivery_tag), v.Bit(m.requeue); }
HAVEN_FIELDS(BasicRecoverAsync) { v.Bit(m.requeue); }
HAVEN_FIELDS(BasicRecover) { v.Bit(m.requeue); }
HAVEN_FIELDS(BasicNack) { v.LongLong(m.delivery_tag), v.Bit(m.multiple), v.Bit(m.requeue); }
HAVEN_FIELDS(ConfirmSelect) { v.Bit(m.no_wait); }

#undef HAVEN_FIELDS

// Tries each alternative of Method in turn; decodes the one whose ids match.
template <size_t I = 0>
bool DecodeAlternative(MethodId id, Reader& r, Method* out) {
  if constexpr (I == std::variant_size_v<Method>) {
    return false;
  } else {
    using T = std::variant_alternative_t<I, Method>;
    if (T::kClassId == id.class_id && T::kMethodId == id.method_id) {
      T m{};
      ArgDecoder d{r};
      Fields(d, m);
      *out = std::move(m);
      return true;
    }
    return DecodeAlternative<I + 1>(id, r, out);
  }
}

constexpr std::string_view ClassName(uint16_t class_id) {
  switch (class_id) {
    case kClassConnection:
      return "connection";
    case kClassChannel:
      return "channel";
    case kClassExchange:
      return "exchange";
    case kClassQueue:
      return "queue";
    case kClassBasic:
      return "basic";
    case kClassConfirm:
      return "confirm";
    case kClassTx:
      return "tx";
    default:
      return "unknown";
  }
}

}  // namespace

// ---- Frames -------------------------------------------------------------------------------------
Result<bool> ParseProtocolHeader(std::string_view first8) {
  if (first8.size() < kProtocolHeader.size()) {
    return MakeAmqpError(kFrameError,
                         "protocol header needs 8 bytes, got " + std::to_string(first8.size()));
  }
  return first8.substr(0, kProtocolHeader.size()) == kProtocolHeader;
}

namespace {
uint32_t EffectiveFrameMax(uint32_t frame_max) {
  if (frame_max == 0 || frame_max > kFrameMaxHardLimit) return kFrameMaxHardLimit;
  return std::max(frame_max, kFrameOverhead);
}
}  // namespace

FrameDecoder::FrameDecoder(uint32_t frame_max) : frame_max_(EffectiveFrameMax(frame_max)) {}

void FrameDecoder::set_frame_max(uint32_t frame_max) { frame_max_ = EffectiveFrameMax(frame_max); }

Status FrameDecoder::Feed(std::string_view bytes) {
  if (!error_.ok()) return error_;
  // Drop consumed bytes before growing, so the buffer stays within about one frame plus the input.
  if (pos_ > 0) {
    buffer_.erase(0, pos_);
    pos_ = 0;
  }
  buffer_.append(bytes);
  error_ = DecodeBuffered();
  if (!error_.ok()) buffer_.clear(), pos_ = 0;
  return error_;
}

Status FrameDecoder::DecodeBuffered() {
  while (buffer_.size() - pos_ >= 7) {
    Reader r(std::string_view(buffer_).substr(pos_));
    uint8_t type = 0;
    uint16_t channel = 0;
    uint32_t size = 0;
    r.U8(&type), r.U16(&channel), r.U32(&size);
    if (type != kFrameMethod && type != kFrameHeader && type != kFrameBody &&
        type != kFrameHeartbeat) {
      return MakeAmqpError(kFrameError, "unknown frame type " + std::to_string(type));
    }
    if (static_cast<uint64_t>(size) + kFrameOverhead > frame_max_) {
      return MakeAmqpError(kFrameError, "frame of " + std::to_string(size + uint64_t{8}) +
                                            " bytes exceeds frame-max " +
                                            std::to_string(frame_max_));
    }
    if (type == kFrameHeartbeat && (channel != 0 || size != 0)) {
      return MakeAmqpError(kFrameError, "heartbeat frame must be on channel 0 and empty");
    }
    if (r.remaining() < static_cast<size_t>(size) + 1) break;
    std::string_view payload;
    uint8_t end = 0;
    r.Bytes(size, &payload), r.U8(&end);
    if (end != kFrameEnd) {
      return MakeAmqpError(kFrameError, "bad frame-end octet " + std::to_string(end));
    }
    frames_.push_back(Frame{type, channel, std::string(payload)});
    pos_ += 7 + static_cast<size_t>(size) + 1;
  }
  return Status::Ok();
}

std::optional<Frame> FrameDecoder::Next() {
  if (frames_.empty()) return std::nullopt;
  Frame f = std::move(frames_.front());
  frames_.pop_front();
  return f;
}

std::string EncodeFrame(uint8_t type, uint16_t channel, std::string_view payload) {
  std::string out;
  out.reserve(payload.size() + kFrameOverhead);
  PutUint<uint8_t>(out, type);
  PutUint<uint16_t>(out, channel);
  PutUint<uint32_t>(out, static_cast<uint32_t>(payload.size()));
  out.append(payload);
  out.push_back(static_cast<char>(kFrameEnd));
  return out;
}

std::string EncodeHeartbeat() { return EncodeFrame(kFrameHeartbeat, 0, {}); }

// ---- Methods ------------------------------------------------------------------------------------
MethodId IdOf(const Method& method) {
  return std::visit(
      [](const auto& m) {
        using T = std::decay_t<decltype(m)>;
        return MethodId{T::kClassId, T::kMethodId};
      },
      method);
}

std::string_view NameOf(const Method& method) {
  static constexpr std::string_view kNames[] = {
      "connection.start", "connection.start-ok", "connection.secure",   "connection.secure-ok",
      "connection.tune",  "connection.tune-ok",  "connection.open",     "connection.open-ok",
      "connection.close", "connection.close-ok", "connection.blocked",  "connection.unblocked",
      "channel.open",     "channel.open-ok",     "channel.flow",        "channel.flow-ok",
      "channel.close",    "channel.close-ok",    "exchange.declare",    "exchange.declare-ok",
      "exchange.delete",  "exchange.delete-ok",  "exchange.bind",       "exchange.bind-ok",
      "exchange.unbind",  "exchange.unbind-ok",  "queue.declare",       "queue.declare-ok",
      "queue.bind",       "queue.bind-ok",       "queue.purge",         "queue.purge-ok",
      "queue.delete",     "queue.delete-ok",     "queue.unbind",        "queue.unbind-ok",
      "basic.qos",        "basic.qos-ok",        "basic.consume",       "basic.consume-ok",
      "basic.cancel",     "basic.cancel-ok",     "basic.publish",       "basic.return",
      "basic.deliver",    "basic.get",           "basic.get-ok",        "basic.get-empty",
      "basic.ack",        "basic.reject",        "basic.recover-async", "basic.recover",
      "basic.recover-ok", "basic.nack",          "confirm.select",      "confirm.select-ok",
      "tx.select",        "tx.select-ok",        "tx.commit",           "tx.commit-ok",
      "tx.rollback",      "tx.rollback-ok"};
  static_assert(std::size(kNames) == std::variant_size_v<Method>);
  return kNames[method.index()];
}

bool CarriesContent(const Method& method) {
  return std::holds_alternative<BasicPublish>(method) ||
         std::holds_alternative<BasicReturn>(method) ||
         std::holds_alternative<BasicDeliver>(method) || std::holds_alternative<BasicGetOk>(method);
}

std::optional<MethodId> PeekMethodId(std::string_view payload) {
  Reader r(payload);
  MethodId id;
  if (!r.U16(&id.class_id) || !r.U16(&id.method_id)) return std::nullopt;
  return id;
}

Result<Method> DecodeMethod(std::string_view payload) {
  Reader r(payload);
  MethodId id;
  if (!r.U16(&id.class_id) || !r.U16(&id.method_id)) {
    return MakeAmqpError(kSyntaxError, "method frame shorter than its class and method ids");
  }
  Method m;
  if (!DecodeAlternative(id, r, &m)) {
    return MakeAmqpError(kNotImplemented,
                         "unknown method " + std::string(ClassName(id.class_id)) + " " +
                             std::to_string(id.class_id) + "/" + std::to_string(id.method_id),
                         id.class_id, id.method_id);
  }
  if (!r.ok()) {
    return MakeAmqpError(kSyntaxError, std::string(NameOf(m)) + ": " + r.error(), id.class_id,
                         id.method_id);
  }
  if (!r.at_end()) {
    return MakeAmqpError(kSyntaxError,
                         std::string(NameOf(m)) + ": " + std::to_string(r.remaining()) +
                             " bytes after the arguments",
                         id.class_id, id.method_id);
  }
  return m;
}

std::string EncodeMethod(const Method& method) {
  std::string out;
  std::visit(
      [&out](const auto& m) {
        using T = std::decay_t<decltype(m)>;
        PutUint<uint16_t>(out, T::kClassId);
        PutUint<uint16_t>(out, T::kMethodId);
        ArgEncoder e{out};
        Fields(e, m);
      },
      method);
  return out;
}

std::string EncodeMethodFrame(uint16_t channel, const Method& method) {
  return EncodeFrame(kFrameMethod, channel, EncodeMethod(method));
}

// ---- Content ------------------------------------------------------------------------------------
namespace {

// Visits the properties in wire order with the flag of each.
template <typename P, typename F>
void ForEachProperty(P& p, F&& f) {
  f(kFlagContentType, p.content_type);
  f(kFlagContentEncoding, p.content_encoding);
  f(kFlagHeaders, p.headers);
  f(kFlagDeliveryMode, p.delivery_mode);
  f(kFlagPriority, p.priority);
  f(kFlagCorrelationId, p.correlation_id);
  f(kFlagReplyTo, p.reply_to);
  f(kFlagExpiration, p.expiration);
  f(kFlagMessageId, p.message_id);
  f(kFlagTimestamp, p.timestamp);
  f(kFlagType, p.type);
  f(kFlagUserId, p.user_id);
  f(kFlagAppId, p.app_id);
  f(kFlagClusterId, p.cluster_id);
}

void ReadProperty(Reader& r, std::optional<std::string>& v) { r.ShortStr(&v.emplace()); }
void ReadProperty(Reader& r, std::optional<FieldTable>& v) { ReadTable(r, &v.emplace(), 0); }
void ReadProperty(Reader& r, std::optional<uint8_t>& v) { r.U8(&v.emplace()); }
void ReadProperty(Reader& r, std::optional<uint64_t>& v) { r.U64(&v.emplace()); }

void WriteProperty(std::string& out, const std::string& v) { PutShortStr(out, v); }
void WriteProperty(std::string& out, const FieldTable& v) { WriteTable(out, v); }
void WriteProperty(std::string& out, uint8_t v) { PutUint<uint8_t>(out, v); }
void WriteProperty(std::string& out, uint64_t v) { PutUint<uint64_t>(out, v); }
}  // namespace

Result<BasicProperties> DecodeProperties(std::string_view raw_properties) {
  Reader r(raw_properties);
  uint16_t flags = 0;
  if (!r.U16(&flags)) return MakeAmqpError(kSyntaxError, "content header: no property flags");
  if (flags & kUnknownFlags) {
    return MakeAmqpError(kSyntaxError, "content header: unknown property flags " +
                                           std::to_string(flags & kUnknownFlags));
  }
  BasicProperties p;
  ForEachProperty(p, [&](uint16_t flag, auto& field) {
    if (flags & flag) ReadProperty(r, field);
  });
  if (!r.ok()) return MakeAmqpError(kSyntaxError, "content header: " + r.error());
  if (!r.at_end()) {
    return MakeAmqpError(kSyntaxError, "content header: " + std::to_string(r.remaining()) +
                                           " bytes after the properties");
  }
  return p;
}

std::string EncodeProperties(const BasicProperties& props) {
  uint16_t flags = 0;
  std::string list;
  ForEachProperty(props, [&](uint16_t flag, const auto& field) {
    if (!field) return;
    flags |= flag;
    WriteProperty(list, *field);
  });
  std::string out;
  PutUint<uint16_t>(out, flags);
  out.append(list);
  return out;
}

Result<ContentHeader> DecodeContentHeader(std::string_view payload) {
  Reader r(payload);
  ContentHeader h;
  uint16_t weight = 0;
  if (!r.U16(&h.class_id) || !r.U16(&weight) || !r.U64(&h.body_size)) {
    return MakeAmqpError(kSyntaxError, "content header: " + r.error());
  }
  if (h.class_id != kClassBasic) {
    return MakeAmqpError(
        kUnexpectedFrame,
        "content header for class " + std::to_string(h.class_id) + ", only basic has content");
  }
  h.raw_properties.assign(payload.substr(12));
  auto props = DecodeProperties(h.raw_properties);
  if (!props.ok()) return props.status();
  h.props = std::move(props).value();
  return h;
}

std::string EncodeContentHeaderRaw(uint16_t class_id, uint64_t body_size,
                                   std::string_view raw_properties) {
  std::string out;
  out.reserve(12 + raw_properties.size());
  PutUint<uint16_t>(out, class_id);
  PutUint<uint16_t>(out, 0);  // weight
  PutUint<uint64_t>(out, body_size);
  out.append(raw_properties);
  return out;
}

std::string EncodeContentHeader(uint16_t class_id, uint64_t body_size,
                                const BasicProperties& props) {
  return EncodeContentHeaderRaw(class_id, body_size, EncodeProperties(props));
}

std::string EncodeContentFrames(uint16_t channel, const Method& method,
                                std::string_view raw_properties, std::string_view body,
                                uint32_t frame_max) {
  const size_t chunk = EffectiveFrameMax(frame_max) - kFrameOverhead;
  std::string out = EncodeMethodFrame(channel, method);
  out += EncodeFrame(kFrameHeader, channel,
                     EncodeContentHeaderRaw(IdOf(method).class_id, body.size(), raw_properties));
  if (chunk == 0) return out;  // unreachable: EffectiveFrameMax >= kFrameOverhead; guards the loop
  for (size_t at = 0; at < body.size(); at += chunk) {
    out += EncodeFrame(kFrameBody, channel, body.substr(at, chunk));
  }
  return out;
}

std::string EncodeContentFrames(uint16_t channel, const Method& method,
                                const BasicProperties& props, std::string_view body,
                                uint32_t frame_max) {
  return EncodeContentFrames(channel, method, EncodeProperties(props), body, frame_max);
}

// ---- Command assembly ---------------------------------------------------------------------------
CommandAssembler::CommandAssembler(uint64_t max_body_size) : max_body_size_(max_body_size) {}

Result<std::optional<Command>> CommandAssembler::Add(const Frame& frame) {
  switch (frame.type) {
    case kFrameMethod: {
      if (pending_) {
        MethodId id = IdOf(pending_->method);
        pending_.reset();
        return MakeAmqpError(kUnexpectedFrame, "method frame while content was expected",
                             id.class_id, id.method_id);
      }
      auto m = DecodeMethod(frame.payload);
      if (!m.ok()) return m.status();
      if (!CarriesContent(*m)) return std::optional<Command>(Command{std::move(m).value(), {}, {}});
      pending_ = Command{std::move(m).value(), std::nullopt, {}};
      return std::optional<Command>();
    }
    case kFrameHeader: {
      if (!pending_ || pending_->header) {
        MethodId id = pending_ ? IdOf(pending_->method) : MethodId{};
        pending_.reset();
        return MakeAmqpError(kUnexpectedFrame, "unexpected content header frame", id.class_id,
                             id.method_id);
      }
      MethodId id = IdOf(pending_->method);
      auto h = DecodeContentHeader(frame.payload);
      if (!h.ok()) {
        pending_.reset();
        AmqpError e = ToAmqpError(h.status());
        return MakeAmqpError(e.code, e.text, id.class_id, id.method_id);
      }
      if (h->body_size > max_body_size_) {
        pending_.reset();
        return MakeAmqpError(kPreconditionFailed,
                             "message size " + std::to_string(h->body_size) +
                                 " is larger than max size " + std::to_string(max_body_size_),
                             id.class_id, id.method_id);
      }
      pending_->header = std::move(h).value();
      break;
    }
    case kFrameBody: {
      if (!pending_ || !pending_->header) {
        MethodId id = pending_ ? IdOf(pending_->method) : MethodId{};
        pending_.reset();
        return MakeAmqpError(kUnexpectedFrame, "unexpected content body frame", id.class_id,
                             id.method_id);
      }
      if (frame.payload.size() > pending_->header->body_size - pending_->body.size()) {
        MethodId id = IdOf(pending_->method);
        pending_.reset();
        return MakeAmqpError(kFrameError, "content body longer than its header's body-size",
                             id.class_id, id.method_id);
      }
      pending_->body.append(frame.payload);
      break;
    }
    default:
      return std::optional<Command>();  // heartbeats are the connection's business
  }
  if (pending_->body.size() < pending_->header->body_size) return std::optional<Command>();
  std::optional<Command> done = std::move(pending_);
  pending_.reset();
  return done;
}

bool ValidateShortString(std::string_view s) { return s.size() <= 255; }

Result<FieldTable> DecodeFieldTable(std::string_view bytes) {
  Reader r(bytes);
  FieldTable t;
  ReadTable(r, &t, 0);
  if (!r.ok()) return MakeAmqpError(kSyntaxError, "field table: " + r.error());
  if (!r.at_end()) return MakeAmqpError(kSyntaxError, "field table: bytes after the table");
  return t;
}

std::string EncodeFieldTable(const FieldTable& table) {
  std::string out;
  WriteTable(out, table);
  return out;
}

}  // namespace haven::mq::amqp
