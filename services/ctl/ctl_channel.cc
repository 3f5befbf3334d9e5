#include "services/ctl/ctl_channel.h"

#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace asymcache::ctl {

absl::Status ChannelOptions::Validate() const {
  if (max_message_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ChannelOptions.max_message_bytes must be > 0, got ", max_message_bytes));
  }
  return security.Validate();
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                           const ChannelOptions& options) {
  if (target.empty()) return absl::InvalidArgumentError("the target address is empty");
  if (absl::Status valid = options.Validate(); !valid.ok()) return valid;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeChannelCredentials(options.security);
  if (!credentials.ok()) return credentials.status();
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(target, *credentials, args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create a gRPC channel to '", target, "'"));
  }
  return channel;
}

}  // namespace asymcache::ctl
