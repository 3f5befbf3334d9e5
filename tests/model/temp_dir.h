// TempDir: a fresh directory under the GoogleTest temp dir for one test,
// removed with everything in it when the object goes out of scope. The model
// tests that write files (safetensors, Hugging Face directories) share it.
//
// Contract: test-only (uses GoogleTest: a failed mkdtemp is a test failure);
// owns the directory; not thread-safe.
#ifndef ASYMCACHE_TESTS_MODEL_TEMP_DIR_H_
#define ASYMCACHE_TESTS_MODEL_TEMP_DIR_H_

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>

#include "gtest/gtest.h"

namespace asymcache::model {

class TempDir {
 public:
  // Creates TEMP/PREFIX_XXXXXX.
  explicit TempDir(const std::string& prefix) {
    std::string pattern =
        (std::filesystem::path(::testing::TempDir()) / (prefix + "_XXXXXX")).string();
    char* made = ::mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr) << "mkdtemp " << pattern;
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // PATH/name (name may hold subdirectories; nothing is created).
  std::string File(const std::string& name) const {
    return (std::filesystem::path(path_) / name).string();
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace asymcache::model

#endif  // ASYMCACHE_TESTS_MODEL_TEMP_DIR_H_
