#include "base/status.h"

namespace haven {

namespace {
const char* CodeName(Code c) {
  switch (c) {
    case Code::kOk:
      return "ok";
    case Code::kInvalidArgument:
      return "invalid_argument";
    case Code::kNotFound:
      return "not_found";
    case Code::kConflict:
      return "conflict";
    case Code::kPermissionDenied:
      return "permission_denied";
    case Code::kTooLarge:
      return "too_large";
    case Code::kMethodNotAllowed:
      return "method_not_allowed";
    case Code::kUnavailable:
      return "unavailable";
    case Code::kIoError:
      return "io_error";
    case Code::kInternal:
      return "internal";
  }
  return "unknown";
}
}  // namespace

std::string Status::ToString() const {
  if (ok()) return "ok";
  return std::string(CodeName(code_)) + ": " + message_;
}

}  // namespace haven
