# Unit tests for the stamp agent (included from tests/unit/CMakeLists.txt).
# Named and labelled like the other unit tests: ctest -L unit.
foreach(agent_test test_agent_config test_agent_load test_dps_service test_dps_alloc test_dps_limits
                   test_dps_x509)
  add_executable(${agent_test} ${CMAKE_CURRENT_LIST_DIR}/${agent_test}.c)
  target_compile_options(${agent_test} PRIVATE ${STAMPCP_WARNINGS})
  target_link_libraries(${agent_test} PRIVATE stampagent_core stampcp_common PkgConfig::CMOCKA)
  add_test(NAME unit_${agent_test} COMMAND ${agent_test})
  set_tests_properties(unit_${agent_test} PROPERTIES LABELS unit TIMEOUT 60)
endforeach()
