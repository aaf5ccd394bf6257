// Status / StatusOr: the error type every library function returns (Abseil semantics, no dependency).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

namespace qc {

/// Error categories; the CLI maps kInvalidArgument/kNotFound/kUnimplemented/kDataLoss to exit code 1.
enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // malformed input file, bad option, wrong shape
  kNotFound,         // missing file, missing tensor
  kUnimplemented,    // unsupported op, dtype or model type
  kDataLoss,         // truncated file, short external data
  kFailedPrecondition,
  kOutOfRange,
  kInternal,         // a bug of ours
};

/// Result of an operation that can fail; carries a message a user can act on.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  /// True for errors caused by the user's input rather than by us.
  bool IsInputError() const { return code_ != StatusCode::kOk && code_ != StatusCode::kInternal; }

  /// Returns a copy with `context: ` prepended to the message.
  Status WithContext(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, context + ": " + message_);
  }
  std::string ToString() const { return ok() ? "OK" : message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return Status(StatusCode::kInvalidArgument, std::move(m)); }
inline Status NotFound(std::string m) { return Status(StatusCode::kNotFound, std::move(m)); }
inline Status Unimplemented(std::string m) { return Status(StatusCode::kUnimplemented, std::move(m)); }
inline Status DataLoss(std::string m) { return Status(StatusCode::kDataLoss, std::move(m)); }
inline Status FailedPrecondition(std::string m) { return Status(StatusCode::kFailedPrecondition, std::move(m)); }
inline Status OutOfRange(std::string m) { return Status(StatusCode::kOutOfRange, std::move(m)); }
inline Status Internal(std::string m) { return Status(StatusCode::kInternal, std::move(m)); }

/// A value or an error.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const Status& status) : status_(status) {  // NOLINT: implicit like absl::StatusOr
    if (status_.ok()) status_ = Internal("StatusOr constructed from OK status without a value");
  }
  StatusOr(T value) : value_(std::move(value)) {}  // NOLINT

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace qc

#define QC_CONCAT_INNER(a, b) a##b
#define QC_CONCAT(a, b) QC_CONCAT_INNER(a, b)

/// Returns the Status from the enclosing function if `expr` is not OK.
#define QC_RETURN_IF_ERROR(expr)           \
  do {                                     \
    ::qc::Status qc_status_ = (expr);      \
    if (!qc_status_.ok()) return qc_status_; \
  } while (0)

#define QC_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()

/// `QC_ASSIGN_OR_RETURN(auto x, MaybeX());` unwraps a StatusOr or returns its error.
#define QC_ASSIGN_OR_RETURN(lhs, expr) QC_ASSIGN_OR_RETURN_IMPL(QC_CONCAT(qc_statusor_, __LINE__), lhs, expr)

/// Programmer errors: abort with file:line. Never used for bad user input.
#define QC_CHECK(cond)                                                              \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)
