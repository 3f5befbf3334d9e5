# asymcache_registrar: the member side of the coordinator's membership
# protocol (member_registrar.h: Register / Heartbeat / Deregister against every
# coordinator replica). Linked by the cache daemon (and workers), so it needs
# only the API stubs, the shared conversions and gRPC — not the coordinator.
#
# Included by services/coordinator/CMakeLists.txt and, when the daemon is
# configured first, by services/daemon/CMakeLists.txt; the first include
# defines the target.
if(TARGET asymcache_registrar)
  return()
endif()
add_library(asymcache_registrar STATIC ${CMAKE_CURRENT_LIST_DIR}/member_registrar.cc)
target_include_directories(asymcache_registrar PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(asymcache_registrar
  PUBLIC cachecore asymcache_proto asymcache_common gRPC::grpc++
         absl::status absl::statusor absl::strings absl::synchronization absl::time absl::hash
         absl::flat_hash_set Threads::Threads)
asymcache_thread_safety(asymcache_registrar)
