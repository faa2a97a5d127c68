# device/examples: sd-provision-one (provision_one.c), one device against the
# local stack through the blocking driver. Built once the driver and the
# machine it runs exist (so the tree links at every commit).
if(TARGET stampdevice_posix AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/../sd_machine.c
   AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/../sd_crypto.c)
  add_executable(sd-provision-one ${CMAKE_CURRENT_LIST_DIR}/provision_one.c)
  target_compile_options(sd-provision-one PRIVATE ${STAMPCP_WARNINGS})
  target_link_libraries(sd-provision-one PRIVATE stampdevice_posix PkgConfig::JANSSON)
endif()
