# The daemon's KV pool memory (host shared memory / CUDA IPC) and its on-start
# GPU calibration (docs/pool.md). Included by services/daemon/CMakeLists.txt:
# appends sources to ASYMCACHE_DAEMON_SOURCES and link libraries to
# ASYMCACHE_DAEMON_LIBS. Without CUDA the *_unavailable.cc halves return
# FAILED_PRECONDITION "built without CUDA" (STYLE.md §17), so the API and the
# tests are the same in every build.
list(APPEND ASYMCACHE_DAEMON_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/pool_layout.cc
  ${CMAKE_CURRENT_LIST_DIR}/pool_memory.cc
  ${CMAKE_CURRENT_LIST_DIR}/host_pool_memory.cc
  ${CMAKE_CURRENT_LIST_DIR}/gpu_calibration.cc)
if(ASYMCACHE_HAVE_CUDA)
  list(APPEND ASYMCACHE_DAEMON_SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/cuda_pool_memory.cc
    ${CMAKE_CURRENT_LIST_DIR}/gpu_calibration_cuda.cc)
  list(APPEND ASYMCACHE_DAEMON_LIBS CUDA::cudart CUDA::cublas)
else()
  list(APPEND ASYMCACHE_DAEMON_SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/cuda_pool_memory_unavailable.cc
    ${CMAKE_CURRENT_LIST_DIR}/gpu_calibration_unavailable.cc)
endif()
list(APPEND ASYMCACHE_DAEMON_LIBS
  msa cachecore absl::status absl::statusor absl::strings absl::str_format
  absl::synchronization absl::time absl::span Threads::Threads)
