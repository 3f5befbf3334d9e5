#include "sim/system.h"

#include <algorithm>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace asymcache {
namespace {

struct BaseSystem {
  const char* name;
  const char* policy;
  bool adaptive;
  bool reuse;
  bool least_remaining = false;
};

constexpr BaseSystem kSystems[] = {
    {"vllm", "lru-tail", false, true},
    {"pensieve", "front-first", false, true},
    {"asymcache", "asym", true, true, true},
    {"asym-fixed", "asym", false, true},
    {"front-first-adaptive", "front-first", true, true},
    {"lru-fixed", "lru", false, true},
    {"none", "lru", false, false},
    {"asymcache-arrival", "asym", true, true, false},
};

}  // namespace

ChunkSchedulerOptions::PrefillOrder PrefillOrderOf(const SystemSpec& system) {
  return system.least_remaining_first ? ChunkSchedulerOptions::PrefillOrder::kLeastRemaining
                                      : ChunkSchedulerOptions::PrefillOrder::kArrival;
}

std::vector<std::string> SystemNames() {
  std::vector<std::string> names;
  for (const BaseSystem& s : kSystems) names.push_back(s.name);
  return names;
}

absl::StatusOr<std::vector<SystemSpec>> ParseSystems(absl::string_view list,
                                                     int64_t default_budget_tokens,
                                                     int64_t tile_tokens) {
  auto bad_budget = [&](int64_t b) {
    return b <= 0 || tile_tokens <= 0 || b % tile_tokens != 0;
  };
  if (bad_budget(default_budget_tokens)) {
    return absl::InvalidArgumentError(absl::StrCat("budget ", default_budget_tokens,
                                                   " must be a positive multiple of ",
                                                   tile_tokens));
  }
  std::vector<SystemSpec> out;
  auto add = [&](const SystemSpec& s) {
    if (std::none_of(out.begin(), out.end(), [&](const SystemSpec& o) { return o.name == s.name; })) {
      out.push_back(s);
    }
  };
  for (absl::string_view item : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    item = absl::StripAsciiWhitespace(item);
    // An order suffix comes last: name[:N][@arrival|@least-remaining].
    std::optional<bool> least_remaining;
    absl::string_view rest = item;
    if (const size_t at = item.find('@'); at != absl::string_view::npos) {
      const absl::StatusOr<ChunkSchedulerOptions::PrefillOrder> order =
          ParsePrefillOrder(item.substr(at + 1));
      if (!order.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "system '", item, "': prefill order must be @arrival or @least-remaining"));
      }
      least_remaining = *order == ChunkSchedulerOptions::PrefillOrder::kLeastRemaining;
      rest = item.substr(0, at);
    }
    std::vector<absl::string_view> parts = absl::StrSplit(rest, absl::MaxSplits(':', 1));
    const absl::string_view base = parts[0];
    const bool has_budget = parts.size() == 2;
    int64_t budget = default_budget_tokens;
    if (has_budget && (!absl::SimpleAtoi(parts[1], &budget) || bad_budget(budget))) {
      return absl::InvalidArgumentError(absl::StrCat("system '", item, "': budget must be a positive ",
                                                     "multiple of ", tile_tokens));
    }
    if (base == "all") {
      if (has_budget || least_remaining.has_value()) {
        return absl::InvalidArgumentError("'all' takes no budget or order suffix");
      }
      for (const BaseSystem& b : kSystems) {
        add(SystemSpec{b.name, b.name, b.policy, b.adaptive, default_budget_tokens, b.reuse,
                       b.least_remaining});
      }
      continue;
    }
    const BaseSystem* found = nullptr;
    for (const BaseSystem& b : kSystems) {
      if (base == b.name) found = &b;
    }
    if (found == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown system '", base, "'; known: all, ",
                                                     absl::StrJoin(SystemNames(), ", ")));
    }
    if (found->adaptive && has_budget) {
      return absl::InvalidArgumentError(
          absl::StrCat("system '", base, "' uses adaptive chunking and takes no budget suffix"));
    }
    add(SystemSpec{std::string(item), found->name, found->policy, found->adaptive, budget,
                   found->reuse, least_remaining.value_or(found->least_remaining)});
  }
  if (out.empty()) return absl::InvalidArgumentError("no system given");
  return out;
}

}  // namespace asymcache
