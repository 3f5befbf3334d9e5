// asymcachectl: the operator CLI of an AsymCache cluster (docs/asymcachectl.md).
//   asymcachectl SUBCOMMAND --flag=value ...   (asymcachectl --help lists them)
// Exit status: 0 ok; 1 the server answered an error, could not be reached in
// time, or (health) is not SERVING, with the gRPC code and message on stderr;
// 2 bad usage, with the mistake named on stderr.
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "services/ctl/ctl_command_line.h"
#include "services/ctl/ctl_commands.h"

int main(int argc, char** argv) {
  namespace ctl = asymcache::ctl;
  absl::StatusOr<ctl::CtlCommandLine> command_line = ctl::ParseCtlCommandLine(argc, argv);
  if (!command_line.ok()) {
    // Where to look next: the subcommand's flags, or the list of subcommands.
    const std::optional<ctl::Subcommand> subcommand =
        argc > 1 ? ctl::SubcommandNamed(argv[1]) : std::nullopt;
    const std::string hint = subcommand.has_value()
                                 ? absl::StrCat("asymcachectl ", ctl::SubcommandName(*subcommand),
                                                " --help lists its flags")
                                 : "asymcachectl --help lists the subcommands";
    std::fprintf(stderr, "asymcachectl: %s\n(%s)\n",
                 std::string(command_line.status().message()).c_str(), hint.c_str());
    return 2;
  }
  if (command_line->help) {
    std::fputs(ctl::CtlHelpText(command_line->help_for).c_str(), stdout);
    return 0;
  }
  const absl::Status run = ctl::RunCtlCommand(command_line->options, std::cout);
  std::cout.flush();
  if (!run.ok()) {
    std::fprintf(stderr, "asymcachectl: %s\n", run.ToString().c_str());
    return 1;
  }
  return 0;
}
