// Base64 (RFC 4648 standard alphabet): how Consul carries KV values inside JSON.
#pragma once

#include <string>
#include <string_view>

#include "base/status.h"

namespace haven {

// Standard alphabet with '=' padding.
std::string Base64Encode(std::string_view data);

// Accepts padded or unpadded input; any character outside the alphabet (including whitespace) or a
// misplaced '=' is an InvalidArgument error.
Result<std::string> Base64Decode(std::string_view text);

}  // namespace haven
