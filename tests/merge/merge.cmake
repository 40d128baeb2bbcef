# `lora merge` and merged generation (label "unit"), and the merged directories against the
# PyTorch oracle (label "oracle"). The library-level tests are tests/unit/test_merge.c.
add_executable(merge_helper ${CMAKE_CURRENT_LIST_DIR}/merge_helper.c)
target_include_directories(merge_helper PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(merge_helper PRIVATE lorac)
add_test(NAME cli_merge
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_merge_cli.sh $<TARGET_FILE:lora>
                 $<TARGET_FILE:make_tiny_model> $<TARGET_FILE:merge_helper>
                 ${CMAKE_CURRENT_BINARY_DIR}/cli_merge)
set_tests_properties(cli_merge PROPERTIES LABELS unit)
add_test(NAME oracle_merge
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/run_merge_oracle.sh $<TARGET_FILE:lora>
                 $<TARGET_FILE:make_tiny_model> $<TARGET_FILE:merge_helper>
                 ${CMAKE_CURRENT_BINARY_DIR}/oracle_merge)
set_tests_properties(oracle_merge PROPERTIES LABELS oracle SKIP_RETURN_CODE 77 TIMEOUT 300)
