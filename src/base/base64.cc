#include "base/base64.h"

#include <array>
#include <cstdint>

namespace haven {
namespace {

constexpr std::string_view kAlphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Reverse table: 0..63 for alphabet characters, -1 for everything else.
constexpr std::array<int8_t, 256> MakeDecodeTable() {
  std::array<int8_t, 256> t{};
  for (auto& v : t) v = -1;
  for (size_t i = 0; i < kAlphabet.size(); ++i) t[static_cast<uint8_t>(kAlphabet[i])] = int8_t(i);
  return t;
}
constexpr auto kDecode = MakeDecodeTable();

// Strips up to two trailing '='; a padded text must then be a whole number of quads.
Result<std::string_view> StripPadding(std::string_view text) {
  size_t pad = 0;
  while (pad < 2 && pad < text.size() && text[text.size() - 1 - pad] == '=') ++pad;
  if (pad > 0 && text.size() % 4 != 0) {
    return Status::InvalidArgument("invalid base64: bad padding");
  }
  return text.substr(0, text.size() - pad);
}

}  // namespace

std::string Base64Encode(std::string_view data) {
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= data.size(); i += 3) {
    uint32_t n = uint32_t(uint8_t(data[i])) << 16 | uint32_t(uint8_t(data[i + 1])) << 8 |
                 uint32_t(uint8_t(data[i + 2]));
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += kAlphabet[n & 63];
  }
  size_t rest = data.size() - i;
  if (rest == 0) return out;
  uint32_t n = uint32_t(uint8_t(data[i])) << 16;
  if (rest == 2) n |= uint32_t(uint8_t(data[i + 1])) << 8;
  out += kAlphabet[(n >> 18) & 63];
  out += kAlphabet[(n >> 12) & 63];
  out += rest == 2 ? kAlphabet[(n >> 6) & 63] : '=';
  out += '=';
  return out;
}

Result<std::string> Base64Decode(std::string_view text) {
  auto body = StripPadding(text);
  if (!body.ok()) return body.status();
  std::string_view s = *body;
  // One leftover character carries only 6 bits: not a byte, so the text was truncated.
  if (s.size() % 4 == 1) return Status::InvalidArgument("invalid base64: truncated input");
  std::string out;
  out.reserve(s.size() / 4 * 3 + 2);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    int8_t v = kDecode[static_cast<uint8_t>(s[i])];
    if (v < 0) {
      return Status::InvalidArgument("invalid base64: unexpected character at offset " +
                                     std::to_string(i));
    }
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xff);
    }
  }
  return out;
}

}  // namespace haven
