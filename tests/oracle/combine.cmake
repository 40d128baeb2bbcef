# `lora combine`: the PyTorch oracle (label "oracle", skipped with 77 without torch) and the
# command line's errors (label "unit"). The library-level test is tests/unit/test_combine.c.
add_executable(combine_fixture ${CMAKE_CURRENT_LIST_DIR}/combine_fixture.c)
target_include_directories(combine_fixture PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(combine_fixture PRIVATE lorac)
add_test(NAME oracle_combine
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/run_combine_oracle.sh $<TARGET_FILE:lora>
                 $<TARGET_FILE:combine_fixture> ${CMAKE_CURRENT_BINARY_DIR}/oracle_combine)
set_tests_properties(oracle_combine PROPERTIES LABELS oracle SKIP_RETURN_CODE 77 TIMEOUT 600)
add_test(NAME cli_combine
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/cli/test_combine.sh $<TARGET_FILE:lora>
                 $<TARGET_FILE:combine_fixture> ${CMAKE_CURRENT_BINARY_DIR}/cli_combine)
set_tests_properties(cli_combine PROPERTIES LABELS unit)
