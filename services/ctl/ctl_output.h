// How asymcachectl prints: aligned text tables for people, protobuf's JSON
// mapping for scripts, and the units its numbers are shown in.
//
// Contract: TextTable is a value (not thread-safe; one owner); the free
// functions are pure and thread-safe.
#ifndef ASYMCACHE_SERVICES_CTL_CTL_OUTPUT_H_
#define ASYMCACHE_SERVICES_CTL_CTL_OUTPUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "google/protobuf/message.h"

namespace asymcache::ctl {

// Rows of cells printed in columns, each as wide as its widest cell, two
// spaces apart, left-aligned; the header row (when given) first.
class TextTable {
 public:
  // `header` empty: no header row (a table of label/value lines).
  explicit TextTable(std::vector<std::string> header = {}) : header_(std::move(header)) {}

  // Precondition: with a header, `cells` has as many cells as the header.
  void AddRow(std::vector<std::string> cells);
  bool empty() const { return rows_.empty(); }

  // Every row, each ending in '\n'; no trailing spaces.
  std::string Render() const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

// JSON output: `multiline` (indented) for one response, one line each for a
// stream's messages (JSON Lines). Proto field names (as in the .proto files),
// every field even when zero, enums by name; 64-bit integers are JSON strings
// (protobuf's JSON mapping). INTERNAL when the message cannot be printed.
absl::StatusOr<std::string> ToJson(const google::protobuf::Message& message, bool multiline);

// Seconds as people read them: "850 us", "12.3 ms", "1.25 s", "3m2s" style
// above a minute; negative or not finite as is ("-0.5 s").
std::string FormatSeconds(double seconds);

// Bytes with a binary unit: "512 B", "1.5 KiB", "64.0 MiB", "2.00 GiB".
std::string FormatBytes(int64_t bytes);

// A Unix time in milliseconds as UTC "2026-11-27 12:00:01.123"; "-" for 0.
std::string FormatUnixMillis(int64_t unix_ms);

}  // namespace asymcache::ctl

#endif  // ASYMCACHE_SERVICES_CTL_CTL_OUTPUT_H_
