# The daemon's KV pool memory (host shared memory / CUDA IPC) and its on-start
# GPU calibration (docs/pool.md). Included by services/daemon/CMakeLists.txt.
# Without CUDA the *_unavailable.cc halves return FAILED_PRECONDITION "built
# without CUDA" (STYLE.md §17), so the API and the tests are the same in every
# build.
#
# asymcache_pool: the pool layout and memory backends, what engines link to
# map a daemon's pool (services/client) without the daemon itself.
set(pool_sources pool_layout.cc pool_memory.cc host_pool_memory.cc)
set(calibration_sources gpu_calibration.cc)
if(ASYMCACHE_HAVE_CUDA)
  list(APPEND pool_sources cuda_pool_memory.cc)
  list(APPEND calibration_sources gpu_calibration_cuda.cc)
else()
  list(APPEND pool_sources cuda_pool_memory_unavailable.cc)
  list(APPEND calibration_sources gpu_calibration_unavailable.cc)
endif()
list(TRANSFORM pool_sources PREPEND ${CMAKE_CURRENT_LIST_DIR}/)
list(TRANSFORM calibration_sources PREPEND ${CMAKE_CURRENT_LIST_DIR}/)

add_library(asymcache_pool STATIC ${pool_sources})
target_include_directories(asymcache_pool PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(asymcache_pool PUBLIC cachecore absl::status absl::statusor absl::strings
                      absl::str_format absl::span Threads::Threads)
if(ASYMCACHE_HAVE_CUDA)
  target_link_libraries(asymcache_pool PUBLIC CUDA::cudart)
endif()

# asymcache_gpu_calibration: MSA + cuBLAS measurements. Linked by the
# asymcache-calibrate binary (which the daemon runs as a child process) and by
# its tests, never by the daemon: cuBLAS's static TLS (~94 KiB in cublasLt)
# exceeds the stack civetweb gives the metrics server's threads.
add_library(asymcache_gpu_calibration STATIC ${calibration_sources})
target_include_directories(asymcache_gpu_calibration PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(asymcache_gpu_calibration PUBLIC msa cachecore absl::status absl::statusor
                      absl::strings absl::str_format absl::time Threads::Threads)
if(ASYMCACHE_HAVE_CUDA)
  target_link_libraries(asymcache_gpu_calibration PUBLIC CUDA::cudart CUDA::cublas)
endif()

add_executable(asymcache-calibrate ${CMAKE_CURRENT_LIST_DIR}/calibrate_main.cc)
target_link_libraries(asymcache-calibrate PRIVATE asymcache_gpu_calibration absl::flags
                      absl::flags_parse absl::flags_usage)

list(APPEND ASYMCACHE_DAEMON_LIBS asymcache_pool)
