# Unit tests of libstampdevice (device/): each is added once its source exists.
foreach(t test_sd_machine test_sd_store test_sd_http)
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${t}.c AND TARGET stampdevice)
    stampcp_unit_test(${t} stampdevice)
  endif()
endforeach()
