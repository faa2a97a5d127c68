# fleetsim: one process simulating up to a million devices (the real
# libstampdevice machine each) against a local stack; binary in build/bin.
# Included by device/CMakeLists.txt once the event-driven driver exists.
if(TARGET stampdevice_ev)
  add_executable(fleetsim
    ${CMAKE_CURRENT_LIST_DIR}/fs_main.c
    ${CMAKE_CURRENT_LIST_DIR}/fs_admin.c
    ${CMAKE_CURRENT_LIST_DIR}/fs_fleet.c
    ${CMAKE_CURRENT_LIST_DIR}/fs_report.c)
  target_compile_options(fleetsim PRIVATE ${STAMPCP_WARNINGS})
  # stampdevice_posix for sd_tls (the admin client speaks TLS to the control plane)
  target_link_libraries(fleetsim PRIVATE stampdevice_ev stampdevice_posix PkgConfig::LIBEVENT PkgConfig::OPENSSL PkgConfig::JANSSON)
endif()
